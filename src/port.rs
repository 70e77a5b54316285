//! Ports and channels (skeleton for the codec's worktree; replaced by the real module).
use std::sync::Arc;

/// A port.
#[derive(Clone, Debug)]
pub struct MessagePort {
    inner: Arc<()>,
}

impl MessagePort {
    /// A new unattached port (skeleton only).
    #[doc(hidden)]
    pub fn dummy() -> MessagePort {
        MessagePort {
            inner: Arc::new(()),
        }
    }
    /// Whether two handles are the same port.
    pub fn ptr_eq(&self, other: &MessagePort) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl PartialEq for MessagePort {
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other)
    }
}
