//! Kernel command lines from operators (`kernel_append_params`,
//! `ramdisk_kernel_arguments`): checked before they reach a boot loader's
//! configuration, where a line break or a boot-loader operator would let
//! them run commands of their own (SECURITY.md: iPXE script injection).

/// The longest command line accepted (Linux's x86 limit is 2048 bytes with
/// what Ferric adds itself).
pub const MAX_LEN: usize = 1900;

/// Where the parameters go; each boot loader has its own dangerous
/// characters on top of the common ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootLoader {
    /// GRUB and ISOLINUX configurations that quote every word: `$`, `;`
    /// and the like are literal there.
    Quoted,
    /// An iPXE script: `$` expands settings, `||` and `&&` chain commands,
    /// `#` starts a comment (and `#!ipxe` a script).
    Ipxe,
}

/// Why a kernel command line is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KernelParamsError {
    #[error("the kernel parameters must be one line (a line break at byte {at})")]
    LineBreak { at: usize },
    #[error("the kernel parameters hold a control character ({byte:#04x}) at byte {at}")]
    ControlCharacter { at: usize, byte: u8 },
    #[error("the kernel parameters must be ASCII (a non-ASCII character at byte {at})")]
    NotAscii { at: usize },
    #[error(
        "the kernel parameters hold {character:?} at byte {at}: quotes and backslashes are \
         refused because boot loaders escape them before the kernel sees them"
    )]
    Quote { at: usize, character: char },
    #[error(
        "the kernel parameters hold {what:?} at byte {at}, which an iPXE script would run \
         or expand; it is refused"
    )]
    IpxeSyntax { at: usize, what: String },
    #[error("the kernel parameters are {len} bytes long; at most {max} are accepted")]
    TooLong { len: usize, max: usize },
}

/// Checks a kernel command line for `loader` and returns its words.
pub fn validate(params: &str, loader: BootLoader) -> Result<Vec<String>, KernelParamsError> {
    if params.len() > MAX_LEN {
        return Err(KernelParamsError::TooLong {
            len: params.len(),
            max: MAX_LEN,
        });
    }
    for (at, c) in params.char_indices() {
        match c {
            '\n' | '\r' => return Err(KernelParamsError::LineBreak { at }),
            c if c.is_ascii_control() => {
                return Err(KernelParamsError::ControlCharacter { at, byte: c as u8 })
            }
            c if !c.is_ascii() => return Err(KernelParamsError::NotAscii { at }),
            '"' | '\'' | '\\' => return Err(KernelParamsError::Quote { at, character: c }),
            _ => {}
        }
    }
    if loader == BootLoader::Ipxe {
        let ipxe = |at: usize, what: &str| KernelParamsError::IpxeSyntax {
            at,
            what: what.to_string(),
        };
        for (at, c) in params.char_indices() {
            if matches!(c, '$' | '#' | '|' | ';' | '`') {
                return Err(ipxe(at, &c.to_string()));
            }
        }
        if let Some(at) = params.find("&&") {
            return Err(ipxe(at, "&&"));
        }
    }
    Ok(params
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_parameters_pass_as_words() {
        let words = validate(
            "console=ttyS0,115200n8  ipa-debug=1 ignition.config.url=http://h/i?a=1&b=2",
            BootLoader::Ipxe,
        )
        .unwrap();
        assert_eq!(
            words,
            [
                "console=ttyS0,115200n8",
                "ipa-debug=1",
                "ignition.config.url=http://h/i?a=1&b=2"
            ]
        );
    }

    #[test]
    fn injections_are_refused_with_where() {
        use KernelParamsError::*;
        let cases: &[(&str, KernelParamsError)] = &[
            ("quiet\n#!ipxe", LineBreak { at: 5 }),
            ("quiet\rshell", LineBreak { at: 5 }),
            ("a\u{7}", ControlCharacter { at: 1, byte: 7 }),
            ("é", NotAscii { at: 0 }),
            (
                "x=\"y\"",
                Quote {
                    at: 2,
                    character: '"',
                },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&validate(input, BootLoader::Quoted).unwrap_err(), want);
        }
        for input in [
            "#!ipxe shell",
            "a ${net0/ip}",
            "a || shell",
            "a && shell",
            "a;b",
        ] {
            let err = validate(input, BootLoader::Ipxe).unwrap_err();
            assert!(matches!(err, IpxeSyntax { .. }), "{input}: {err}");
            assert!(err.to_string().contains("iPXE"), "{err}");
        }
        // Quoted loaders take them literally.
        assert!(validate("a ${x};y", BootLoader::Quoted).is_ok());
        let long = "a".repeat(MAX_LEN + 1);
        assert!(matches!(
            validate(&long, BootLoader::Ipxe),
            Err(TooLong { .. })
        ));
    }
}
