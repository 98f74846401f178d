//! `log.collect_system_logs`: the agent's and the system's logs as a gzip+base64 tarball.
