//! ferric-agent: the program in the deploy ramdisk. It looks its node up by
//! MAC address, heartbeats to the conductor, serves IPA's command API, and
//! runs deploy and clean steps through hardware managers (disk writing with
//! the ferric-image crate).

pub mod bootloader;
pub mod client;
pub mod commands;
pub mod config;
pub mod coreos;
pub mod deploy;
pub mod download;
pub mod hardware;
pub mod hints;
pub mod inventory;
pub mod logs;
pub mod operator_steps;
pub mod run;
pub mod server;
pub mod standard;
pub mod system;
pub mod tls;
