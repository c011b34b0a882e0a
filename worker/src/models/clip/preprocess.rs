//! CLIP image preprocessing, as `transformers`' `CLIPImageProcessor`:
//! resize the shorter side to the input size (bicubic with antialiasing,
//! rounded back to 8 bits), centre crop, scale to [0, 1], normalise with
//! CLIP's mean and std.
//!
//! The resize runs libtorch's `_upsample_bicubic2d_aa` on the 8-bit image
//! on the CPU, the kernel `torchvision` calls for the processor (its uint8
//! path rounds between the horizontal and vertical passes, like Pillow), so
//! the result is the reference's to the bit.

use crate::models::image::image_to_tensor;
use image::RgbImage;
use tch::{Device, Kind, Tensor};

/// OpenAI CLIP's per-channel mean (RGB, in [0, 1]).
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// OpenAI CLIP's per-channel standard deviation.
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// `(height, width)` with the shorter side `size`, the longer scaled and
/// truncated (`transformers`' `get_resize_output_image_size`).
pub fn resized_dims(height: i64, width: i64, size: i64) -> (i64, i64) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((size * long) as f64 / short as f64) as i64;
    if width <= height {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// Resizes the shorter side to `size` and centre-crops `size × size`;
/// returns `[1, 3, size, size]` floats 0..=255 (whole numbers, as the
/// reference's 8-bit intermediate).
pub fn resize_and_crop(img: &RgbImage, size: i64, device: Device) -> Tensor {
    let (w, h) = img.dimensions();
    let (h, w) = (h as i64, w as i64);
    let x = image_to_tensor(img);
    let (nh, nw) = resized_dims(h, w, size);
    let x = if (nh, nw) == (h, w) {
        x
    } else {
        x.internal_upsample_bicubic2d_aa([nh, nw], false, None, None)
    };
    center_crop(&x, size, size)
        .to_kind(Kind::Float)
        .to_device(device)
}

/// `CLIPImageProcessor.center_crop`: zero-pads a side shorter than the crop,
/// then cuts at `int((side - crop) / 2)`.
pub fn center_crop(x: &Tensor, ch: i64, cw: i64) -> Tensor {
    let size = x.size();
    let (mut h, mut w) = (size[2], size[3]);
    let mut x = x.shallow_clone();
    if cw > w || ch > h {
        let left = if cw > w { (cw - w) / 2 } else { 0 };
        let top = if ch > h { (ch - h) / 2 } else { 0 };
        let right = if cw > w { (cw - w + 1) / 2 } else { 0 };
        let bottom = if ch > h { (ch - h + 1) / 2 } else { 0 };
        x = x.constant_pad_nd([left, right, top, bottom]);
        h = x.size()[2];
        w = x.size()[3];
    }
    let top = ((h - ch) as f64 / 2.0) as i64;
    let left = ((w - cw) as f64 / 2.0) as i64;
    x.narrow(2, top, ch).narrow(3, left, cw)
}

/// `(x - mean) / std` per channel for `x` in [0, 1] (`[B, 3, H, W]`);
/// differentiable, on `x`'s device and kind.
pub fn normalize(x: &Tensor) -> Tensor {
    let opts = (x.kind(), x.device());
    let mean = Tensor::from_slice(&CLIP_MEAN)
        .to_kind(opts.0)
        .to_device(opts.1)
        .view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&CLIP_STD)
        .to_kind(opts.0)
        .to_device(opts.1)
        .view([1, 3, 1, 1]);
    (x - mean) / std
}

/// The processor's pixel values for a batch of images: `[B, 3, size, size]` float32.
pub fn preprocess(images: &[RgbImage], size: i64, device: Device) -> Tensor {
    assert!(!images.is_empty(), "preprocess needs at least one image");
    let batch: Vec<Tensor> = images
        .iter()
        .map(|img| resize_and_crop(img, size, device))
        .collect();
    // The processor fuses rescale and normalise: (x - 255 mean) / (255 std).
    let x = Tensor::cat(&batch, 0);
    let mean = Tensor::from_slice(&CLIP_MEAN.map(|m| (m as f32) as f64 * 255.0))
        .to_kind(Kind::Float)
        .to_device(device)
        .view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&CLIP_STD.map(|s| (s as f32) as f64 * 255.0))
        .to_kind(Kind::Float)
        .to_device(device)
        .view([1, 3, 1, 1]);
    (x - mean) / std
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dims_follow_the_shorter_side() {
        assert_eq!(resized_dims(480, 640, 224), (224, 298));
        assert_eq!(resized_dims(500, 375, 224), (298, 224));
        assert_eq!(resized_dims(100, 100, 224), (224, 224));
    }

    #[test]
    fn crop_pads_small_inputs_and_centres() {
        let x = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([1, 1, 3, 4]);
        let c = center_crop(&x, 2, 2);
        assert_eq!(
            Vec::<f32>::try_from(c.flatten(0, -1)).unwrap(),
            [1., 2., 5., 6.]
        );
        let p = center_crop(&x, 5, 4);
        assert_eq!(p.size(), [1, 1, 5, 4]);
        assert_eq!(p.sum(Kind::Float).double_value(&[]), 66.0);
    }

    #[test]
    fn uniform_images_normalise_to_constants() {
        let img = RgbImage::from_pixel(50, 30, image::Rgb([255, 0, 128]));
        let x = preprocess(&[img], 16, Device::Cpu);
        assert_eq!(x.size(), [1, 3, 16, 16]);
        let r = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0];
        let g = -CLIP_MEAN[1] / CLIP_STD[1];
        let b = (128.0 / 255.0 - CLIP_MEAN[2]) / CLIP_STD[2];
        for (c, want) in [r, g, b].into_iter().enumerate() {
            let v = x.select(1, c as i64);
            assert!((v.max().double_value(&[]) - want).abs() < 1e-4);
            assert!((v.min().double_value(&[]) - want).abs() < 1e-4);
        }
    }
}
