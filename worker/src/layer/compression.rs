//! Layer and archive compression: recognized by magic bytes, undone while
//! streaming. Layers use gzip or zstd; `ADD` also unpacks bzip2 and xz.

use std::io::{self, BufRead, BufReader, Read};

/// How a blob or file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl Compression {
    /// Looks at the first bytes of `reader` without consuming them.
    pub fn detect<R: BufRead>(reader: &mut R) -> io::Result<Self> {
        let head = reader.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else if head.starts_with(b"BZh") {
            Self::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Self::Xz
        } else {
            Self::None
        })
    }

    /// The OCI layer media type for a tar compressed this way. OCI has none
    /// for bzip2 and xz (only `ADD` meets them); they map to plain tar.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Self::None | Self::Bzip2 | Self::Xz => "application/vnd.oci.image.layer.v1.tar",
            Self::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// `reader`'s content, decompressed as its magic bytes say.
pub fn decompressed<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    Ok(match Compression::detect(&mut reader)? {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(reader)),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new(reader, true)),
    })
}
