//! Serves cached instance images to agents (and later boot files), with Range support.
