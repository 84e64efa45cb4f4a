//! TODO: explain
