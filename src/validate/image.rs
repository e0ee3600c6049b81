//! `validate --image-input NAME=FILE`: a PNG or JPEG file as the pixels Core ML hands an image
//! input: 8-bit channels in the input's color space, values 0–255, as an fp32 `[1, C, H, W]`
//! array. Decoding goes through the `image` crate with limits; the file is opened as a regular
//! file of bounded size (`files`). Called by the CLI's `validate`.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use crate::interp::{Array, Data};
use crate::mil::{ColorSpace, DType};

/// Largest image file read: a 50-megapixel JPEG is well under it.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;
/// Largest decoded width or height accepted (larger ones are hostile or not photos).
pub const MAX_IMAGE_SIDE: u32 = 1 << 15;
/// Most bytes the decoder may allocate (a 16384² RGBA8 image).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// Why an image file cannot be an input; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    File(#[from] crate::files::Error),
    #[error("{}: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },
}

/// How the pixels were obtained, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Loaded {
    /// Size of the file's image, width × height.
    pub original: (u32, u32),
    /// Whether it was resized to the input's size.
    pub resized: bool,
}

/// Reads the PNG or JPEG at `path` as the `[1, C, height, width]` pixels of an image input in
/// `space`. An image of another size is stretched to `width` × `height` with a bilinear
/// (triangle) filter; crop it beforehand to keep its aspect ratio.
pub fn load(path: &Path, space: ColorSpace, height: usize, width: usize) -> Result<(Array, Loaded), Error> {
    let bytes = crate::files::read_capped(path, MAX_IMAGE_FILE_BYTES)?;
    let fail = |reason: String| Error::Decode { path: path.to_path_buf(), reason };
    let mut reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| fail(e.to_string()))?;
    if !matches!(reader.format(), Some(image::ImageFormat::Png | image::ImageFormat::Jpeg)) {
        return Err(fail("not a PNG or JPEG file".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| fail(format!("cannot decode: {e}")))?;
    let original = (decoded.width(), decoded.height());
    let (w, h) = (u32::try_from(width).ok().filter(|&w| w > 0 && w <= MAX_IMAGE_SIDE), u32::try_from(height).ok().filter(|&h| h > 0 && h <= MAX_IMAGE_SIDE));
    let (Some(w), Some(h)) = (w, h) else { return Err(fail(format!("the input wants {width}×{height} pixels"))) };
    let resized = original != (w, h);
    let decoded = if resized { decoded.resize_exact(w, h, FilterType::Triangle) } else { decoded };
    let plane = width * height;
    let mut data = vec![0f32; space.channels() * plane];
    match space {
        ColorSpace::Gray => {
            for (d, p) in data.iter_mut().zip(decoded.to_luma8().pixels()) {
                *d = f32::from(p.0[0]);
            }
        }
        ColorSpace::Rgb | ColorSpace::Bgr => {
            let order: [usize; 3] = if space == ColorSpace::Rgb { [0, 1, 2] } else { [2, 1, 0] };
            for (i, p) in decoded.to_rgb8().pixels().enumerate() {
                for (c, &from) in order.iter().enumerate() {
                    data[c * plane + i] = f32::from(p.0[from]);
                }
            }
        }
    }
    let array = Array { dtype: DType::F32, shape: vec![1, space.channels(), height, width], data: Data::F32(data) };
    Ok((array, Loaded { original, resized }))
}
