//! The `system` and `standby` power commands: lockdown, power_off, run_image.
