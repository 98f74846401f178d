//! The server-side image cache for `image_download_source=local`: download once, inspect, convert to raw, checksum and block map, keyed by content, with size and age limits.
