//! Powering the machine off or rebooting it from the agent:
//! `standby.power_off`, `standby.run_image` (reboot into the written image)
//! and `system.lockdown`. IPA runs the `poweroff`/`reboot` programs and
//! falls back to sysrq; the ramdisk has nothing to stop cleanly, so the
//! agent syncs and asks the kernel directly.
//!
//! The kernel call sits behind [`PowerControl`] so tests can watch it
//! happen instead of losing the machine they run on.

use crate::commands::CommandError;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// What to do to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    PowerOff,
    Reboot,
}

impl PowerAction {
    fn describe(self) -> &'static str {
        match self {
            PowerAction::PowerOff => "power off",
            PowerAction::Reboot => "reboot",
        }
    }
}

/// Flushing disks and switching the machine off or rebooting it.
pub trait PowerControl: Send + Sync + 'static {
    /// Flushes file system buffers to the disks (sync(2)).
    fn sync(&self);

    /// Powers off or reboots now. Returns only if that failed (or, for
    /// fakes, after recording the call).
    fn act(&self, action: PowerAction) -> io::Result<()>;
}

/// The real thing: sync(2) and reboot(2). Needs CAP_SYS_BOOT.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelPower;

impl PowerControl for KernelPower {
    fn sync(&self) {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }

    fn act(&self, action: PowerAction) -> io::Result<()> {
        let command = match action {
            PowerAction::PowerOff => libc::RB_POWER_OFF,
            PowerAction::Reboot => libc::RB_AUTOBOOT,
        };
        // SAFETY: reboot(2) takes one integer command and no pointers; it
        // either does not return or fails with errno set.
        let rc = unsafe { libc::reboot(command) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Power control switched off: syncs, but refuses to power off or reboot.
/// The default of a [`Power`], so that only the agent's `main` (with
/// [`Power::kernel`]) can ever switch a machine off, never a test that
/// builds a handler, and `--no-power` keeps test agents harmless.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPower;

impl PowerControl for NoPower {
    fn sync(&self) {
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }

    fn act(&self, action: PowerAction) -> io::Result<()> {
        Err(io::Error::other(format!(
            "this agent runs with power control disabled (--no-power or \
             FERRIC_AGENT_NO_POWER): it does not {}",
            action.describe()
        )))
    }
}

/// The power controls and how long to wait before acting, so that the
/// answer to the command that asked for it reaches the conductor first.
#[derive(Clone)]
pub struct Power {
    control: Arc<dyn PowerControl>,
    delay: Duration,
}

impl std::fmt::Debug for Power {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Power")
            .field("delay", &self.delay)
            .finish_non_exhaustive()
    }
}

/// How long the agent waits between answering and acting, by default.
pub const DEFAULT_POWER_DELAY: Duration = Duration::from_secs(2);

impl Default for Power {
    /// Disabled: see [`NoPower`].
    fn default() -> Self {
        Power::new(Arc::new(NoPower), DEFAULT_POWER_DELAY)
    }
}

impl Power {
    /// The kernel's sync(2) and reboot(2), for the agent in a ramdisk.
    pub fn kernel() -> Self {
        Power::new(Arc::new(KernelPower), DEFAULT_POWER_DELAY)
    }

    pub fn new(control: Arc<dyn PowerControl>, delay: Duration) -> Self {
        Power { control, delay }
    }

    pub fn sync(&self) {
        self.control.sync();
    }

    /// Syncs, waits the delay, then powers off or reboots. For the
    /// asynchronous `standby.power_off` and `standby.run_image`: their
    /// RUNNING answer has been sent by then. An error means the machine is
    /// still up (IPA's `SystemRebootError`).
    pub fn shutdown(&self, action: PowerAction) -> Result<(), CommandError> {
        tracing::info!(
            "flushing the disks, then {} in {:?}",
            action.describe(),
            self.delay
        );
        self.control.sync();
        std::thread::sleep(self.delay);
        self.control.act(action).map_err(|error| {
            CommandError::new(
                "SystemRebootError",
                "Error rebooting system",
                format!("the kernel refused to {}: {error}", action.describe()),
            )
        })
    }

    /// Syncs now, then powers off on a thread of its own after the delay,
    /// for the synchronous `system.lockdown`, whose answer must go out
    /// first. A failure can only be logged.
    pub fn power_off_later(&self) {
        self.control.sync();
        let power = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(power.delay);
            if let Err(error) = power.control.act(PowerAction::PowerOff) {
                tracing::error!(%error, "locked down, but the kernel refused to power off");
            }
        });
    }
}

#[cfg(test)]
mod power_default_tests {
    use super::*;

    /// A handler built without [`Power::kernel`] can never switch the
    /// machine off: the default refuses, and says how it was configured.
    #[test]
    fn the_default_power_control_refuses() {
        let power = Power::new(Arc::new(NoPower), Duration::ZERO);
        let error = power.shutdown(PowerAction::PowerOff).unwrap_err();
        assert!(error.details.contains("power control disabled"), "{error}");
        assert!(format!("{:?}", Power::default()).contains("Power"));
    }
}
