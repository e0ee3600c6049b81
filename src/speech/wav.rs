//! Reads a WAV file (RIFF; integer PCM of 8–32 bits or IEEE float, any channel count and sample
//! rate) into mono f32 samples in [-1, 1), through the `hound` crate, and resamples to
//! [`SAMPLE_RATE`](super::SAMPLE_RATE) when needed. Scaling follows soundfile/libsndfile (what
//! `run_testbed.py` reads with): an n-bit integer sample `x` becomes `x / 2^(n-1)`; channels are
//! averaged (`a.mean(axis=1)`). Called by `cli::validate_speech` and by tests.

use std::path::Path;

use hound::{SampleFormat, WavReader};

use super::{resample, Error, SAMPLE_RATE};

/// One decoded file: mono samples and their rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    /// Mono samples in [-1, 1).
    pub samples: Vec<f32>,
    /// Samples per second, from the header.
    pub sample_rate: u32,
}

/// Reads `path` as mono f32 at its own sample rate. A missing, truncated or non-WAV file is an
/// error naming the file and the problem.
pub fn read(path: &Path) -> Result<Audio, Error> {
    let bad = |e: hound::Error| match e {
        hound::Error::IoError(io) if io.kind() == std::io::ErrorKind::NotFound => Error::file(path, "no such file"),
        hound::Error::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::file(path, "truncated: the file ends inside its header or data chunk")
        }
        hound::Error::IoError(io) => Error::file(path, format!("cannot read it as WAV: {io}")),
        hound::Error::FormatError(m) => Error::file(path, format!("not a valid WAV file ({m}); truncated or corrupt?")),
        hound::Error::Unsupported => Error::file(path, "WAV encoding not supported (need integer PCM or IEEE float)"),
        other => Error::file(path, format!("not a valid WAV file ({other})")),
    };
    let reader = WavReader::open(path).map_err(bad)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 || spec.sample_rate == 0 {
        return Err(Error::file(path, "WAV header declares no channels or a zero sample rate"));
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        SampleFormat::Float => reader.into_samples::<f32>().collect::<Result<_, _>>().map_err(bad)?,
        SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f64;
            reader.into_samples::<i32>().map(|s| s.map(|x| (f64::from(x) * scale) as f32)).collect::<Result<_, _>>().map_err(bad)?
        }
    };
    if interleaved.len() % channels != 0 {
        return Err(Error::file(path, "truncated: the last frame is missing samples"));
    }
    let samples = if channels == 1 {
        interleaved
    } else {
        interleaved.chunks_exact(channels).map(|f| f.iter().sum::<f32>() / channels as f32).collect()
    };
    Ok(Audio { samples, sample_rate: spec.sample_rate })
}

/// Reads `path` as mono f32 at [`SAMPLE_RATE`], resampling other rates with
/// [`resample::resample`]. What `validate` feeds both Whisper backends.
pub fn read_16k(path: &Path) -> Result<Vec<f32>, Error> {
    let audio = read(path)?;
    if audio.samples.is_empty() {
        return Err(Error::file(path, "the WAV file holds no samples"));
    }
    Ok(if audio.sample_rate == SAMPLE_RATE { audio.samples } else { resample::resample(&audio.samples, audio.sample_rate, SAMPLE_RATE) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hound::{WavSpec, WavWriter};

    fn write(path: &Path, spec: WavSpec, frames: &[Vec<f64>]) {
        let mut w = WavWriter::create(path, spec).unwrap();
        for frame in frames {
            for &x in frame {
                match spec.sample_format {
                    SampleFormat::Float => w.write_sample(x as f32).unwrap(),
                    SampleFormat::Int => w.write_sample((x * (1u64 << (spec.bits_per_sample - 1)) as f64).round() as i32).unwrap(),
                }
            }
        }
        w.finalize().unwrap();
    }

    #[test]
    fn every_bit_depth_and_channel_count_reads_as_mono_in_unit_range() {
        let dir = tempfile::tempdir().unwrap();
        // Left 0.5, right -0.25: mono is their mean, 0.125, at every depth (exact in 8 bits too).
        let frames: Vec<Vec<f64>> = (0..100).map(|_| vec![0.5, -0.25]).collect();
        for (bits, format) in [(8, SampleFormat::Int), (16, SampleFormat::Int), (24, SampleFormat::Int), (32, SampleFormat::Int), (32, SampleFormat::Float)] {
            let path = dir.path().join(format!("{bits}{format:?}.wav"));
            write(&path, WavSpec { channels: 2, sample_rate: 22_050, bits_per_sample: bits, sample_format: format }, &frames);
            let a = read(&path).unwrap();
            assert_eq!((a.sample_rate, a.samples.len()), (22_050, 100), "{bits} {format:?}");
            assert!(a.samples.iter().all(|&x| (x - 0.125).abs() < 1e-6), "{bits} {format:?}: {}", a.samples[0]);
        }
    }

    #[test]
    fn missing_and_corrupt_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.wav");
        assert_eq!(read(&missing).unwrap_err().to_string(), format!("{}: no such file", missing.display()));
        let junk = dir.path().join("junk.wav");
        std::fs::write(&junk, b"this is not a RIFF file at all").unwrap();
        let e = read(&junk).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: not a valid WAV file", junk.display())), "{e}");
        let empty = dir.path().join("empty.wav");
        write(&empty, WavSpec { channels: 1, sample_rate: 16_000, bits_per_sample: 16, sample_format: SampleFormat::Int }, &[]);
        assert!(read_16k(&empty).unwrap_err().to_string().ends_with("holds no samples"));
    }
}
