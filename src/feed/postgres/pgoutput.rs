//! Decoding of pgoutput messages (protocol version 1, text mode).
