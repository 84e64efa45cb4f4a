//! TODO: deliver
