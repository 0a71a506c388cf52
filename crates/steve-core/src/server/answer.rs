//! [`Answer`]: the bytes a server writes back for one request. A jobserver's answers are a
//! few dozen bytes (a token, a write's length, an error), and one is built for every request,
//! so small ones are kept inline, without the heap allocation and free a `Vec` would cost on
//! the request path; larger, rarer ones are on the heap.

use std::fmt;

/// One answer, ready to write in one `write`. Two answers are equal when their bytes are,
/// wherever they are kept.
#[derive(Clone)]
pub struct Answer(Bytes);

#[derive(Clone)]
enum Bytes {
    Inline { len: u8, bytes: [u8; Answer::INLINE] },
    Heap(Vec<u8>),
}

impl Answer {
    /// The largest answer kept inline (a FUSE header and the largest of its device replies'
    /// bodies, an open's).
    pub const INLINE: usize = 32;

    /// `parts` one after another.
    pub fn from_parts(parts: &[&[u8]]) -> Answer {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        if len > Answer::INLINE {
            return Answer(Bytes::Heap(parts.concat()));
        }
        let mut bytes = [0u8; Answer::INLINE];
        let mut at = 0;
        for part in parts {
            bytes[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        Answer(Bytes::Inline { len: len as u8, bytes })
    }
}

impl From<Vec<u8>> for Answer {
    fn from(bytes: Vec<u8>) -> Answer {
        Answer(Bytes::Heap(bytes))
    }
}

impl std::ops::Deref for Answer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Bytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Bytes::Heap(bytes) => bytes,
        }
    }
}

impl PartialEq for Answer {
    fn eq(&self, other: &Answer) -> bool {
        **self == **other
    }
}

impl Eq for Answer {}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Answer").field(&&**self).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_joined_inline_or_on_the_heap_alike() {
        let small = Answer::from_parts(&[b"head", b"", b"body"]);
        assert_eq!(&*small, b"headbody");
        assert!(matches!(small.0, Bytes::Inline { .. }));
        let exact = Answer::from_parts(&[&[7u8; Answer::INLINE]]);
        assert_eq!(&*exact, &[7u8; Answer::INLINE]);
        assert!(matches!(exact.0, Bytes::Inline { .. }));
        let large = Answer::from_parts(&[&[1u8; 20], &[2u8; 20]]);
        assert_eq!(large.len(), 40);
        assert_eq!(&large[..20], &[1u8; 20]);
        assert_eq!(&large[20..], &[2u8; 20]);
        assert!(matches!(large.0, Bytes::Heap(_)));
        assert_eq!(Answer::from(b"headbody".to_vec()), small, "equal by their bytes");
        assert_ne!(Answer::from(b"headbod".to_vec()), small);
    }
}
