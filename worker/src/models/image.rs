//! Images and tensors, both ways, in one place: RGB8 images ↔ `[B, 3, H, W]`
//! tensors (channels first, as every model here reads them).

use anyhow::Context;
use image::RgbImage;
use tch::{Device, Kind, Tensor};

/// An 8-bit RGB image as a contiguous `[1, 3, H, W]` uint8 tensor on the CPU.
pub fn image_to_tensor(img: &RgbImage) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .contiguous()
}

/// An image → `[1, 3, H, W]` float32 in `0..1` on `device`.
pub fn from_image(img: &RgbImage, device: Device) -> Tensor {
    image_to_tensor(img).to_kind(Kind::Float).to_device(device) / 255.0
}

/// Images of one size → `[B, 3, H, W]` float32 in `0..1` on the CPU.
pub fn from_images(images: &[RgbImage]) -> Tensor {
    let (w, h) = images[0].dimensions();
    let mut data = Vec::with_capacity(images.len() * (w * h * 3) as usize);
    for img in images {
        data.extend_from_slice(img.as_raw());
    }
    Tensor::from_slice(&data)
        .view([images.len() as i64, h as i64, w as i64, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        / 255.0
}

/// `[B, 3, H, W]` in `0..1` → images, each value `clamp(0, 1) · 255`
/// rounded to the nearest level.
pub fn to_images(x: &Tensor) -> anyhow::Result<Vec<RgbImage>> {
    images_from(x, Levels::Round)
}

/// `[B, 3, H, W]` in `0..1` → images, each value `clamp(0, 1) · 255`
/// truncated to an integer (as min-dalle does).
pub fn to_images_truncated(x: &Tensor) -> anyhow::Result<Vec<RgbImage>> {
    images_from(x, Levels::Truncate)
}

/// How `0..255` floats become 8-bit levels.
#[derive(Clone, Copy)]
enum Levels {
    Round,
    Truncate,
}

fn images_from(x: &Tensor, levels: Levels) -> anyhow::Result<Vec<RgbImage>> {
    let (b, c, h, w) = x.size4().context("images must be [B, 3, H, W]")?;
    anyhow::ensure!(c == 3, "images must have 3 channels, not {c}");
    let scaled = x.to_kind(Kind::Float).clamp(0.0, 1.0) * 255.0;
    let scaled = match levels {
        Levels::Round => scaled.round(),
        Levels::Truncate => scaled,
    };
    let pixels = scaled
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .to_device(Device::Cpu);
    let data: Vec<u8> = Vec::try_from(pixels.reshape([-1]))?;
    let per = (h * w * 3) as usize;
    (0..b as usize)
        .map(|i| {
            RgbImage::from_raw(w as u32, h as u32, data[i * per..(i + 1) * per].to_vec())
                .context("image buffer size")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_round_trip_through_tensors() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let t = from_image(&img, Device::Cpu);
        assert_eq!(t.size(), [1, 3, 3, 5]);
        let back = to_images(&t).unwrap();
        assert_eq!(back[0], img);
        let two = from_images(&[img.clone(), img.clone()]);
        assert_eq!(two.size(), [2, 3, 3, 5]);
        assert_eq!(to_images(&two).unwrap(), [img.clone(), img.clone()]);
        assert_eq!(image_to_tensor(&img).size(), [1, 3, 3, 5]);
    }

    #[test]
    fn pixels_are_clipped_and_truncated() {
        let raw = Tensor::from_slice(&[-0.5f32, 0.0, 0.5, 0.9999, 1.0, 2.0]).reshape([1, 3, 1, 2]);
        let img = &to_images_truncated(&raw).unwrap()[0];
        assert_eq!(img.get_pixel(0, 0).0, [0, 127, 255]);
        assert_eq!(img.get_pixel(1, 0).0, [0, 254, 255]);
    }

    #[test]
    fn pixels_are_clipped_and_rounded() {
        let raw = Tensor::from_slice(&[-0.5f32, 0.0, 0.5, 0.9999, 1.0, 2.0]).reshape([1, 3, 1, 2]);
        let img = &to_images(&raw).unwrap()[0];
        assert_eq!(img.get_pixel(0, 0).0, [0, 128, 255]);
        assert_eq!(img.get_pixel(1, 0).0, [0, 255, 255]);
    }
}
