//! The serializer of the typed format (see the module docs of `typed`).

use serde::ser::{self, Serialize};

use super::{Error, MAGIC_BUFFER, MAGIC_PORT, Outbound, is_bytes_iter};
use crate::error::DataCloneErrorKind;

/// Writes one value into `out`.
pub(super) struct Serializer<'a, 'c> {
    pub(super) out: &'a mut Vec<u8>,
    pub(super) ctx: &'a mut Outbound<'c>,
}

#[inline]
pub(super) fn put_varint(out: &mut Vec<u8>, v: u128) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        put_varint_slow(out, v);
    }
}

fn put_varint_slow(out: &mut Vec<u8>, mut v: u128) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

/// A sequence whose length is not known in advance gets a length of this many bytes
/// (a varint padded with continuation bits), patched when it ends.
const PADDED_LEN: usize = 10;

impl Serializer<'_, '_> {
    fn len(&mut self, len: usize) {
        put_varint(self.out, len as u128);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.len(bytes.len());
        self.out.extend_from_slice(bytes);
    }

    fn variant(&mut self, index: u32) {
        put_varint(self.out, u128::from(index));
    }
}

/// A sequence or map being written: counts its items, to patch the length in when it
/// was not given, or to check it when it was (a `Serialize` impl may declare a length
/// and write another number of items).
pub(super) struct Compound<'s, 'a, 'c> {
    ser: &'s mut Serializer<'a, 'c>,
    /// Where a padded length waits to be patched (`None`: the length was written).
    patch: Option<usize>,
    /// The length written, for a sequence or map (`None` for tuples and structs).
    declared: Option<usize>,
    items: usize,
}

impl<'s, 'a, 'c> Compound<'s, 'a, 'c> {
    fn new(ser: &'s mut Serializer<'a, 'c>, len: Option<usize>) -> Self {
        match len {
            Some(n) => {
                ser.len(n);
                Compound { ser, patch: None, declared: Some(n), items: 0 }
            }
            None => {
                let at = ser.out.len();
                ser.out.extend_from_slice(&[0x80; PADDED_LEN - 1]);
                ser.out.push(0);
                Compound { ser, patch: Some(at), declared: None, items: 0 }
            }
        }
    }

    /// Fields of a tuple or struct: no length on the wire.
    fn fields(ser: &'s mut Serializer<'a, 'c>) -> Self {
        Compound { ser, patch: None, declared: None, items: 0 }
    }

    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.items += 1;
        value.serialize(&mut *self.ser)
    }

    fn end(self) -> Result<(), Error> {
        if self.declared.is_some_and(|n| n != self.items) {
            // The receiver would read the items after these as part of this sequence.
            return Err(Error::Clone(DataCloneErrorKind::Uncloneable));
        }
        if let Some(at) = self.patch {
            let mut v = self.items as u64;
            for (i, byte) in self.ser.out[at..at + PADDED_LEN].iter_mut().enumerate() {
                let more = if i + 1 < PADDED_LEN { 0x80 } else { 0 };
                *byte = (v as u8 & 0x7f) | more;
                v >>= 7;
            }
        }
        Ok(())
    }
}

macro_rules! unsigned {
    ($($f:ident: $t:ty),*) => {$(
        fn $f(self, v: $t) -> Result<(), Error> {
            put_varint(self.out, u128::from(v));
            Ok(())
        }
    )*};
}

macro_rules! signed {
    ($($f:ident: $t:ty),*) => {$(
        fn $f(self, v: $t) -> Result<(), Error> {
            put_varint(self.out, zigzag(i128::from(v)));
            Ok(())
        }
    )*};
}

impl<'s, 'a, 'c> ser::Serializer for &'s mut Serializer<'a, 'c> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'s, 'a, 'c>;
    type SerializeTuple = Compound<'s, 'a, 'c>;
    type SerializeTupleStruct = Compound<'s, 'a, 'c>;
    type SerializeTupleVariant = Compound<'s, 'a, 'c>;
    type SerializeMap = Compound<'s, 'a, 'c>;
    type SerializeStruct = Compound<'s, 'a, 'c>;
    type SerializeStructVariant = Compound<'s, 'a, 'c>;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.push(u8::from(v));
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.out.push(v);
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.out.push(v as u8);
        Ok(())
    }
    unsigned!(serialize_u16: u16, serialize_u32: u32, serialize_u64: u64, serialize_u128: u128);
    signed!(serialize_i16: i16, serialize_i32: i32, serialize_i64: i64, serialize_i128: i128);
    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Error> {
        put_varint(self.out, u128::from(u32::from(v)));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.bytes(v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.bytes(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Error> {
        self.out.push(0);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.out.push(1);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Result<(), Error> {
        self.variant(index);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, value: &T) -> Result<(), Error> {
        // An `ArrayBuffer` or `MessagePort` field: it left itself in a thread-local
        // slot just before this call (see `typed::serde_impls`).
        if name == MAGIC_BUFFER {
            return self.ctx.buffer(self.out);
        }
        if name == MAGIC_PORT {
            return self.ctx.port(self.out);
        }
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.variant(index);
        value.serialize(self)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Ok(Compound::new(self, len))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Ok(Compound::fields(self))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Error> {
        Ok(Compound::fields(self))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        self.variant(index);
        Ok(Compound::fields(self))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, Error> {
        Ok(Compound::new(self, len))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Error> {
        Ok(Compound::fields(self))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        self.variant(index);
        Ok(Compound::fields(self))
    }

    /// `Vec<u8>`, `[u8]` and `&[u8]` come here with a slice iterator: one copy instead
    /// of a call per byte (serde has no specialisation for byte sequences).
    fn collect_seq<I>(self, iter: I) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let iter = iter.into_iter();
        if let Some(bytes) = is_bytes_iter(&iter) {
            self.bytes(bytes);
            return Ok(());
        }
        let (low, high) = iter.size_hint();
        let mut seq = Compound::new(self, (Some(low) == high).then_some(low));
        for item in iter {
            seq.item(&item)?;
        }
        seq.end()
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

impl ser::SerializeSeq for Compound<'_, '_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.item(value)
    }
    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}

macro_rules! fields {
    ($($tr:ident :: $f:ident $(($key:ty))?),*) => {$(
        impl ser::$tr for Compound<'_, '_, '_> {
            type Ok = ();
            type Error = Error;
            fn $f<T: Serialize + ?Sized>(&mut self, $(_: $key,)? value: &T) -> Result<(), Error> {
                value.serialize(&mut *self.ser)
            }
            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        }
    )*};
}

fields!(
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str)
);

impl ser::SerializeMap for Compound<'_, '_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.item(key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut *self.ser)
    }
    fn end(self) -> Result<(), Error> {
        Compound::end(self)
    }
}
