//! TODO: bs
