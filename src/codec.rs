//! TEMPORARY placeholder while the real codec is written on the `codec` branch.
use crate::buffer::ArrayBuffer;
use crate::error::{DataCloneError, MessageError};
use crate::port::MessagePort;
use crate::value::Value;
pub(crate) struct Transfer<'a> {
    pub(crate) buffers: &'a [ArrayBuffer],
    pub(crate) ports: &'a [MessagePort],
}
pub(crate) fn encode(
    value: &Value,
    transfer: &Transfer<'_>,
    out: &mut Vec<u8>,
) -> Result<(), DataCloneError> {
    let _ = (value, transfer, out);
    Ok(())
}
pub(crate) fn decode(
    bytes: &[u8],
    buffers: &[ArrayBuffer],
    ports: &[MessagePort],
) -> Result<Value, MessageError> {
    let _ = (bytes, buffers, ports);
    Err(MessageError::new("placeholder"))
}
