//! The structured-clone wire format (being written).
