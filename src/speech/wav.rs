//! Reads a WAV file (RIFF; integer PCM of 8–32 bits or IEEE float, any channel count and sample
//! rate) into mono f32 samples in [-1, 1), through the `hound` crate, and resamples to
//! [`SAMPLE_RATE`](super::SAMPLE_RATE) when needed. Scaling follows soundfile/libsndfile (what
//! `run_testbed.py` reads with): an n-bit integer sample `x` becomes `x / 2^(n-1)`; channels are
//! averaged (`a.mean(axis=1)`). Called by `cli::validate_speech` and by tests.

use std::io::BufReader;
use std::path::Path;

use hound::{SampleFormat, WavReader};

use super::{resample, Error, SAMPLE_RATE};
use crate::files;

/// Lowest sample rate read. Below 1 kHz no speech band survives, and resampling a rate of 1 Hz
/// to 16 kHz would make 16 000 outputs per input sample.
pub const MIN_SAMPLE_RATE: u32 = 1_000;
/// Highest sample rate read: 384 kHz, the top rate of studio converters (DXD is 352.8 kHz).
pub const MAX_SAMPLE_RATE: u32 = 384_000;
/// Longest audio read, in seconds: 20 Whisper windows. Validation clips last seconds to minutes;
/// longer recordings can be split.
pub const MAX_AUDIO_SECONDS: u64 = 600;
/// Most frames (samples per channel) read: 10 minutes at 48 kHz. Bounds the decoded mono audio
/// (115 MB of f32) and the resampler's work (about 70 taps per frame) at any sample rate.
pub const MAX_FRAMES: u64 = MAX_AUDIO_SECONDS * 48_000;

/// One decoded file: mono samples and their rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    /// Mono samples in [-1, 1).
    pub samples: Vec<f32>,
    /// Samples per second, from the header.
    pub sample_rate: u32,
}

/// Reads `path` as mono f32 at its own sample rate. A missing, truncated or non-WAV file, a rate
/// outside [`MIN_SAMPLE_RATE`]..=[`MAX_SAMPLE_RATE`], or audio declared longer than
/// [`MAX_AUDIO_SECONDS`] or [`MAX_FRAMES`] is an error naming the file and the problem, found
/// from the header before samples are read. Frames are averaged as they are read (no
/// interleaved copy), and the header's declared length is never used to reserve memory: a
/// tiny file declaring 2^32 samples fails when its data runs out.
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
    let file = match files::open_regular(path) {
        Ok((file, _)) => file,
        Err(files::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Err(Error::file(path, "no such file")),
        Err(e) => return Err(e.into()),
    };
    let reader = WavReader::new(BufReader::new(file)).map_err(bad)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 {
        return Err(Error::file(path, "WAV header declares no channels"));
    }
    let rate = spec.sample_rate;
    if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
        return Err(Error::file(
            path,
            format!("sample rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE}..={MAX_SAMPLE_RATE} Hz (corrupt header?)"),
        ));
    }
    let frames = u64::from(reader.duration());
    if frames > MAX_FRAMES || frames / u64::from(rate) >= MAX_AUDIO_SECONDS {
        return Err(Error::file(
            path,
            format!(
                "declares {frames} frames ({} s at {rate} Hz), more than the {MAX_AUDIO_SECONDS} s or {MAX_FRAMES} frames read; split the recording",
                frames / u64::from(rate)
            ),
        ));
    }
    // Past the header, a read that fails means the data chunk is shorter than it claims.
    let short = |e: hound::Error| match e {
        hound::Error::IoError(io) => Error::file(path, format!("truncated: the file ends inside its data chunk ({io})")),
        other => bad(other),
    };
    let mut mono = Mono { samples: Vec::new(), frame: 0.0, filled: 0, channels };
    match spec.sample_format {
        SampleFormat::Float => {
            for s in reader.into_samples::<f32>() {
                mono.push(s.map_err(short)?);
            }
        }
        SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f64;
            for s in reader.into_samples::<i32>() {
                mono.push((f64::from(s.map_err(short)?) * scale) as f32);
            }
        }
    }
    if mono.filled != 0 {
        return Err(Error::file(path, "truncated: the last frame is missing samples"));
    }
    Ok(Audio { samples: mono.samples, sample_rate: rate })
}

/// Averages interleaved samples into mono frames as they are read (`a.mean(axis=1)`).
struct Mono {
    samples: Vec<f32>,
    /// Sum of the current frame's samples so far.
    frame: f32,
    /// Samples of the current frame seen so far.
    filled: usize,
    channels: usize,
}

impl Mono {
    fn push(&mut self, x: f32) {
        self.frame += x;
        self.filled += 1;
        if self.filled == self.channels {
            self.samples.push(if self.channels == 1 { self.frame } else { self.frame / self.channels as f32 });
            (self.frame, self.filled) = (0.0, 0);
        }
    }
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

    /// A canonical 44-byte PCM header declaring `data_len` bytes of 16-bit samples, then `data`.
    fn crafted(path: &Path, channels: u16, rate: u32, data_len: u32, data: &[u8]) {
        let block_align = 2 * channels;
        let mut b = Vec::new();
        b.extend(b"RIFF");
        b.extend(36u32.wrapping_add(data_len).to_le_bytes());
        b.extend(b"WAVEfmt ");
        b.extend(16u32.to_le_bytes());
        b.extend(1u16.to_le_bytes()); // PCM
        b.extend(channels.to_le_bytes());
        b.extend(rate.to_le_bytes());
        b.extend(rate.wrapping_mul(u32::from(block_align)).to_le_bytes());
        b.extend(block_align.to_le_bytes());
        b.extend(16u16.to_le_bytes());
        b.extend(b"data");
        b.extend(data_len.to_le_bytes());
        b.extend(data);
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn issue_hostile_sample_rates_out_of_range_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rate.wav");
        for rate in [0, 1, 999, 384_001, 2_000_000_000] {
            crafted(&path, 1, rate, 2000, &[0; 2000]);
            let start = std::time::Instant::now();
            let e = read_16k(&path).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: sample rate {rate} Hz is outside", path.display())), "{rate}: {e}");
            assert!(start.elapsed() < std::time::Duration::from_secs(1));
        }
        // 4 GHz: hound already refuses the header (its byte rate cannot be written in 32 bits).
        crafted(&path, 1, 4_000_000_000, 2000, &[0; 2000]);
        assert!(read_16k(&path).unwrap_err().to_string().starts_with(&format!("{}: not a valid WAV file", path.display())));
        for rate in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] {
            crafted(&path, 1, rate, 2000, &[0; 2000]);
            assert_eq!(read(&path).unwrap().samples.len(), 1000, "{rate}");
        }
    }

    #[test]
    fn issue_hostile_declared_lengths_are_bounded_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.wav");
        // 2^31 samples declared in a 1 KB file: refused from the header.
        crafted(&path, 1, 16_000, u32::MAX - 1, &[0; 1000]);
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("declares 2147483647 frames") && e.contains("split the recording"), "{e}");
        // Eleven minutes at 1 kHz: few frames, too long.
        crafted(&path, 1, 1_000, 2 * 660_000, &[0; 1000]);
        assert!(read(&path).unwrap_err().to_string().contains("(660 s at 1000 Hz)"));
        // A length within the limits that the file does not hold: truncated, no large allocation.
        crafted(&path, 2, 48_000, 4 * 1_000_000, &[0; 1000]);
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn issue_hostile_a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("audio.wav");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = read(&fifo).unwrap_err().to_string();
        assert!(e.contains("audio.wav") && e.ends_with("is a FIFO, not a regular file"), "{e}");
    }
}
