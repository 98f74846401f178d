//! TLS for the agent: its own certificate for the command API, and the client settings (insecure, cafile, client certificate) for talking to the conductor and downloading images.
