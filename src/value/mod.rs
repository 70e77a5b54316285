//! `Value`: what a message carries, modelled on the web's structured-clone values. The
//! rules (trees with identity for handles, what is copied, moved or refused, how
//! received values are checked) are documented on the public type.

pub(crate) mod buffer;
pub(crate) mod codec;
mod ids;
pub(crate) mod shared;
pub(crate) mod typed;

use crate::channel::MessagePort;
use crate::value::buffer::ArrayBuffer;
use crate::value::shared::SharedArrayBuffer;

/// A structured-clone value: what [`MessagePort::post_message`] sends and
/// [`MessageEvent::data`](crate::MessageEvent::data) holds.
///
/// # Trees, with identity for handles
///
/// Arrays, objects, maps and sets are trees here: a Rust `Value` cannot express a
/// cycle or a shared sub-object, so none is sent, and a sub-value referenced twice is
/// sent twice. Identity *is* kept for the two handle types: an [`ArrayBuffer`] or a
/// [`MessagePort`] referenced twice in one message (directly or through a
/// [`TypedArray`]) arrives as one object referenced twice. `==` compares those two
/// handle types by identity, as JS `===` does, and everything else by value.
///
/// # Copied, moved, or refused
///
/// Everything in a message is copied, except [`SharedArrayBuffer`]s, which are shared
/// (the receiver maps the same memory; one may not be in the transfer list), and the
/// items of the transfer list, which are moved: an `ArrayBuffer` in it is detached here and its pages handed over (see
/// [`ArrayBuffer`]), a `MessagePort` in it is detached here and arrives working in
/// [`MessageEvent::ports`](crate::MessageEvent::ports). A `Port` value must be in the
/// transfer list; a detached buffer or port, a value nested deeper than 128 levels, or a
/// typed-array view outside its buffer is refused with a `DataCloneError` before
/// anything is sent or detached (SEMANTICS 5 and 11).
///
/// # Received values
///
/// Decoding never trusts the sender: malformed bytes, an unknown tag, nesting past 128
/// levels, a length beyond the message, a view outside its buffer or a forged buffer
/// descriptor become a [`MessageError`](crate::MessageError), never a panic or a large
/// allocation. Buffers in a received value may still be written by a hostile sender:
/// see [`ArrayBuffer`].
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// JS `undefined`.
    #[default]
    Undefined,
    /// JS `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number (IEEE 754 double, as in JS).
    Number(f64),
    /// An arbitrary-precision integer.
    BigInt(BigInt),
    /// A string.
    String(String),
    /// A `Date`: milliseconds since the Unix epoch (may be NaN, an invalid date).
    Date(f64),
    /// An array (dense; holes are `Undefined`).
    Array(Vec<Value>),
    /// A plain object: its own enumerable string-keyed properties, in order.
    Object(Vec<(String, Value)>),
    /// A `Map`, in insertion order.
    Map(Vec<(Value, Value)>),
    /// A `Set`, in insertion order.
    Set(Vec<Value>),
    /// An `ArrayBuffer`: copied, or moved when it is in the transfer list.
    ArrayBuffer(ArrayBuffer),
    /// A typed-array or `DataView` over an `ArrayBuffer`.
    TypedArray(TypedArray),
    /// A `MessagePort`; it must be in the transfer list.
    Port(MessagePort),
    /// A `SharedArrayBuffer`: shared with the receiver, never copied or moved; it
    /// must not be in the transfer list.
    SharedArrayBuffer(SharedArrayBuffer),
}

/// An arbitrary-precision integer: a sign and a little-endian magnitude without
/// trailing zero bytes (zero is an empty magnitude, never negative).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct BigInt {
    negative: bool,
    magnitude: Vec<u8>,
}

impl BigInt {
    /// From a sign and a little-endian magnitude (normalised).
    pub fn from_sign_magnitude(negative: bool, magnitude_le: &[u8]) -> BigInt {
        let end = magnitude_le.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let magnitude = magnitude_le[..end].to_vec();
        BigInt { negative: negative && !magnitude.is_empty(), magnitude }
    }

    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The little-endian magnitude, without trailing zero bytes.
    pub fn magnitude_le(&self) -> &[u8] {
        &self.magnitude
    }

    /// The value as an `i128`, if it fits.
    pub fn to_i128(&self) -> Option<i128> {
        if self.magnitude.len() > 16 {
            return None;
        }
        let mut bytes = [0u8; 16];
        bytes[..self.magnitude.len()].copy_from_slice(&self.magnitude);
        let m = u128::from_le_bytes(bytes);
        if self.negative {
            if m <= i128::MAX as u128 + 1 { Some((m as i128).wrapping_neg()) } else { None }
        } else {
            i128::try_from(m).ok()
        }
    }
}

impl From<i128> for BigInt {
    fn from(v: i128) -> BigInt {
        BigInt::from_sign_magnitude(v < 0, &v.unsigned_abs().to_le_bytes())
    }
}

impl From<i64> for BigInt {
    fn from(v: i64) -> BigInt {
        BigInt::from(i128::from(v))
    }
}

impl From<u128> for BigInt {
    fn from(v: u128) -> BigInt {
        BigInt::from_sign_magnitude(false, &v.to_le_bytes())
    }
}

/// The element type of a typed-array view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TypedArrayKind {
    /// `Int8Array`
    Int8,
    /// `Uint8Array`
    Uint8,
    /// `Uint8ClampedArray`
    Uint8Clamped,
    /// `Int16Array`
    Int16,
    /// `Uint16Array`
    Uint16,
    /// `Int32Array`
    Int32,
    /// `Uint32Array`
    Uint32,
    /// `Float32Array`
    Float32,
    /// `Float64Array`
    Float64,
    /// `BigInt64Array`
    BigInt64,
    /// `BigUint64Array`
    BigUint64,
    /// `DataView` (its length counts bytes)
    DataView,
}

impl TypedArrayKind {
    /// Bytes per element (1 for `DataView`).
    pub fn element_size(self) -> usize {
        match self {
            Self::Int8 | Self::Uint8 | Self::Uint8Clamped | Self::DataView => 1,
            Self::Int16 | Self::Uint16 => 2,
            Self::Int32 | Self::Uint32 | Self::Float32 => 4,
            Self::Float64 | Self::BigInt64 | Self::BigUint64 => 8,
        }
    }

    /// All kinds, in wire order.
    pub(crate) const ALL: [TypedArrayKind; 12] = [
        Self::Int8,
        Self::Uint8,
        Self::Uint8Clamped,
        Self::Int16,
        Self::Uint16,
        Self::Int32,
        Self::Uint32,
        Self::Float32,
        Self::Float64,
        Self::BigInt64,
        Self::BigUint64,
        Self::DataView,
    ];
}

/// A view of `length` elements of `kind` starting `byte_offset` bytes into `buffer`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedArray {
    /// Element type.
    pub kind: TypedArrayKind,
    /// The viewed buffer (shared with any other value that references it).
    pub buffer: ArrayBuffer,
    /// Start, in bytes; a multiple of the element size.
    pub byte_offset: usize,
    /// Number of elements.
    pub length: usize,
}

impl TypedArray {
    /// Whether the view lies inside its buffer and is aligned to its element size.
    pub fn is_valid(&self) -> bool {
        let size = self.kind.element_size();
        self.byte_offset.is_multiple_of(size)
            && self
                .length
                .checked_mul(size)
                .and_then(|n| n.checked_add(self.byte_offset))
                .is_some_and(|end| end <= self.buffer.byte_length())
    }
}

macro_rules! from_impls {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from($v: $t) -> Value {
                $e
            }
        })*
    };
}

from_impls! {
    () => |_v| Value::Undefined,
    bool => |v| Value::Bool(v),
    f64 => |v| Value::Number(v),
    i32 => |v| Value::Number(f64::from(v)),
    u32 => |v| Value::Number(f64::from(v)),
    &str => |v| Value::String(v.to_owned()),
    String => |v| Value::String(v),
    Vec<Value> => |v| Value::Array(v),
    ArrayBuffer => |v| Value::ArrayBuffer(v),
    MessagePort => |v| Value::Port(v),
    SharedArrayBuffer => |v| Value::SharedArrayBuffer(v),
    BigInt => |v| Value::BigInt(v),
    TypedArray => |v| Value::TypedArray(v),
}

impl Value {
    /// The string, if this is a `String`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is a `Number`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The buffer, if this is an `ArrayBuffer`.
    pub fn as_array_buffer(&self) -> Option<&ArrayBuffer> {
        match self {
            Value::ArrayBuffer(b) => Some(b),
            _ => None,
        }
    }

    /// The port, if this is a `Port`.
    pub fn as_port(&self) -> Option<&MessagePort> {
        match self {
            Value::Port(p) => Some(p),
            _ => None,
        }
    }

    /// The property `key`, if this is an `Object` that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(props) => props.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}
