//! The deserializer of the typed format (see the module docs of `typed`). Its input
//! is untrusted: every length is checked against what is left, nesting is bounded, and
//! the number of items all sequences together may declare is bounded by the input's
//! length (so sequences of zero-sized values cannot make it loop without end).

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::{Error, Inbound, MAGIC_BUFFER, MAGIC_PORT, MAX_DEPTH, is_byte_vec, reason};

/// Reads one value from `input`.
pub(super) struct Deserializer<'de, 'a, 'c> {
    pub(super) input: &'de [u8],
    pub(super) at: usize,
    depth: usize,
    /// Items that sequences and maps may still declare.
    budget: usize,
    pub(super) ctx: &'a mut Inbound<'c>,
}

/// Zero-sized items (units, empty tuples) a message may declare beyond its length.
const ZERO_SIZED_ITEMS: usize = 4096;

impl<'de, 'a, 'c> Deserializer<'de, 'a, 'c> {
    pub(super) fn new(input: &'de [u8], ctx: &'a mut Inbound<'c>) -> Self {
        Deserializer { input, at: 0, depth: 0, budget: input.len() + ZERO_SIZED_ITEMS, ctx }
    }

    fn left(&self) -> usize {
        self.input.len() - self.at
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'de [u8], Error> {
        if n > self.left() {
            return Err(Error::decode(reason::TRUNCATED));
        }
        let bytes = &self.input[self.at..self.at + n];
        self.at += n;
        Ok(bytes)
    }

    fn byte(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    /// A LEB128 varint of at most `bits` (<= 64) bits.
    #[inline]
    fn varint(&mut self, bits: u32) -> Result<u64, Error> {
        // Most integers of a message are below 128: one byte.
        if let Some(&b) = self.input.get(self.at)
            && b < 0x80
        {
            self.at += 1;
            return Ok(u64::from(b));
        }
        let v = self.varint64_slow()?;
        if bits < 64 && v >> bits != 0 { Err(Error::decode(reason::VARINT)) } else { Ok(v) }
    }

    /// As `varint_slow(10)`, in 64 bits.
    fn varint64_slow(&mut self) -> Result<u64, Error> {
        let rest = &self.input[self.at..];
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = rest.get(i) else { return Err(Error::decode(reason::TRUNCATED)) };
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(Error::decode(reason::VARINT));
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                self.at += i + 1;
                return Ok(v);
            }
        }
        Err(Error::decode(reason::VARINT))
    }

    /// A LEB128 varint of up to 128 bits.
    fn varint128(&mut self) -> Result<u128, Error> {
        self.varint_slow(19)
    }

    /// A varint of at most `most` bytes (padded encodings, see `ser::PADDED_LEN`, are
    /// accepted), with no bit beyond the 128th.
    fn varint_slow(&mut self, most: usize) -> Result<u128, Error> {
        let rest = &self.input[self.at..];
        let mut v: u128 = 0;
        for (i, &b) in rest.iter().take(most).enumerate() {
            let (part, shift) = (u128::from(b & 0x7f), 7 * i as u32);
            if shift < 128 && (shift <= 121 || part >> (128 - shift) == 0) {
                v |= part << shift;
            } else if part != 0 {
                return Err(Error::decode(reason::VARINT));
            }
            if b & 0x80 == 0 {
                self.at += i + 1;
                return Ok(v);
            }
        }
        Err(Error::decode(if rest.len() < most { reason::TRUNCATED } else { reason::VARINT }))
    }

    fn signed(&mut self, bits: u32) -> Result<i128, Error> {
        let v = if bits > 64 { self.varint128()? } else { u128::from(self.varint(bits)?) };
        Ok((v >> 1) as i128 ^ -((v & 1) as i128))
    }

    /// A length of bytes that follow: at most what is left.
    pub(super) fn len(&mut self) -> Result<usize, Error> {
        let n = self.varint(64)?;
        if n > self.left() as u64 {
            return Err(Error::decode(reason::TRUNCATED));
        }
        Ok(n as usize)
    }

    /// A count of sequence or map items, charged to the budget.
    fn count(&mut self) -> Result<usize, Error> {
        let n = self.varint(64)?;
        if n > self.budget as u64 {
            return Err(Error::decode(reason::TOO_MANY_ITEMS));
        }
        self.budget -= n as usize;
        Ok(n as usize)
    }

    pub(super) fn bytes(&mut self) -> Result<&'de [u8], Error> {
        let n = self.len()?;
        self.take(n)
    }

    pub(super) fn index(&mut self) -> Result<usize, Error> {
        Ok(self.varint(32)? as usize)
    }

    fn nested<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R, Error>) -> Result<R, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(Error::decode(reason::TOO_DEEP));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn items<'s>(&'s mut self, left: usize) -> Items<'s, 'de, 'a, 'c> {
        Items { de: self, left }
    }
}

/// The items of a sequence, tuple, struct or map.
struct Items<'s, 'de, 'a, 'c> {
    de: &'s mut Deserializer<'de, 'a, 'c>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Items<'_, 'de, '_, '_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        // Never more than the input could hold, so a visitor's reservation is bounded.
        Some(self.left.min(self.de.left()))
    }
}

impl<'de> de::MapAccess<'de> for Items<'_, 'de, '_, '_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.de)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.left()))
    }
}

impl<'de> de::EnumAccess<'de> for &mut Deserializer<'de, '_, '_> {
    type Error = Error;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let index = self.varint(32)? as u32;
        let value = seed.deserialize(IntoDeserializer::<Error>::into_deserializer(index))?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Deserializer<'de, '_, '_> {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(self.items(len))
    }
    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(self.items(fields.len()))
    }
}

macro_rules! unsigned {
    ($($f:ident: $visit:ident $t:ty, $bits:expr);*) => {$(
        fn $f<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.$visit(self.varint($bits)? as $t)
        }
    )*};
}

macro_rules! signed {
    ($($f:ident: $visit:ident $t:ty, $bits:expr);*) => {$(
        fn $f<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let v = self.signed($bits)?;
            visitor.$visit(<$t>::try_from(v).map_err(|_| Error::decode(reason::VARINT))?)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de, '_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::decode(reason::NOT_SELF_DESCRIBING))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::decode(reason::NOT_SELF_DESCRIBING))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(Error::decode(reason::BOOL)),
        }
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u8(self.byte()?)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i8(self.byte()? as i8)
    }
    unsigned!(deserialize_u16: visit_u16 u16, 16; deserialize_u32: visit_u32 u32, 32;
        deserialize_u64: visit_u64 u64, 64);
    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u128(self.varint128()?)
    }
    signed!(deserialize_i16: visit_i16 i16, 16; deserialize_i32: visit_i32 i32, 32;
        deserialize_i64: visit_i64 i64, 64; deserialize_i128: visit_i128 i128, 128);
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f32(f32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let c = char::from_u32(self.varint(32)? as u32).ok_or(Error::decode(reason::CHAR))?;
        visitor.visit_char(c)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let s = std::str::from_utf8(self.bytes()?).map_err(|_| Error::decode(reason::UTF8))?;
        visitor.visit_borrowed_str(s)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_bytes(self.bytes()?)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => self.nested(|de| visitor.visit_some(de)),
            _ => Err(Error::decode(reason::OPTION)),
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, Error> {
        if name == MAGIC_BUFFER {
            let buffer = self.buffer()?;
            return super::hand_over(&super::INCOMING, super::Slot::Buffer(buffer), || visitor.visit_unit());
        }
        if name == MAGIC_PORT {
            let port = self.port()?;
            return super::hand_over(&super::INCOMING, super::Slot::Port(port), || visitor.visit_unit());
        }
        self.nested(|de| visitor.visit_newtype_struct(de))
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // `Vec<u8>` (and `Box<[u8]>`, built from one): one copy instead of a call per
        // byte, which is what serde's `Vec<T>` visitor would make.
        if let Some(make) = is_byte_vec::<V>() {
            let bytes = self.bytes()?;
            return Ok(make(bytes.to_vec()));
        }
        let n = self.count()?;
        self.nested(|de| visitor.visit_seq(de.items(n)))
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.nested(|de| visitor.visit_seq(de.items(len)))
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let n = self.count()?;
        self.nested(|de| visitor.visit_map(de.items(n)))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(fields.len(), visitor)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.nested(|de| visitor.visit_enum(de))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_u32(visitor)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}
