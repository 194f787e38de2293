//! Readers of the trace formats in `../shared/data`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::Series;

/// Errors reading data files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not in the expected format.
    #[error("{path}:{line}: {why}")]
    Format {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// The data lines of a text file with a header: (1-based line number, line), blank lines
/// skipped.
fn data_lines(
    path: &Path,
) -> Result<impl Iterator<Item = Result<(usize, String), DataError>>, DataError> {
    let path = path.to_path_buf();
    Ok(open(&path)?
        .lines()
        .enumerate()
        .skip(1)
        .filter_map(move |(i, line)| match line {
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(Ok((i + 1, l))),
            Err(source) => Some(Err(DataError::Io {
                path: path.clone(),
                source,
            })),
        }))
}

fn open(path: &Path) -> Result<Box<dyn BufRead>, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io {
        path: path.into(),
        source,
    })?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Box::new(BufReader::new(reader)))
}

/// One row of a Bitbrains CSV, as recorded (no gridding).
#[derive(Debug, Clone, PartialEq)]
pub struct BitbrainsRow {
    /// Sample time, Unix seconds.
    pub time_s: i64,
    /// CPU cores provisioned.
    pub cores: f64,
    /// CPU provisioned, MHz.
    pub cpu_capacity_mhz: f64,
    /// CPU used, MHz.
    pub cpu_mhz: f64,
    /// Memory provisioned, KB.
    pub memory_capacity_kb: f64,
    /// Memory used, KB.
    pub memory_kb: f64,
    /// Disk read throughput, KB/s.
    pub disk_read_kbps: f64,
    /// Disk write throughput, KB/s.
    pub disk_write_kbps: f64,
    /// Network received, KB/s (0 when the column is missing).
    pub net_rx_kbps: f64,
    /// Network transmitted, KB/s (0 when the column is missing).
    pub net_tx_kbps: f64,
}

/// The VM id of a trace file (`vm-001` for `vm-001.csv.gz`).
pub fn vm_id(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.split('.').next().unwrap_or(n).to_string())
        .unwrap_or_default()
}

/// Every row of one Bitbrains CSV (optionally gzipped), sorted by time: `;`+tab separated,
/// timestamps in Unix seconds despite the header's "[ms]"; irregular steps and gaps kept.
pub fn bitbrains_rows(path: &Path) -> Result<Vec<BitbrainsRow>, DataError> {
    let mut rows = Vec::new();
    for line in data_lines(path)? {
        let (line_no, line) = line?;
        let cols: Vec<&str> = line.split(';').map(str::trim).collect();
        let bad = |why: String| DataError::Format {
            path: path.into(),
            line: line_no,
            why,
        };
        if cols.len() < 9 {
            return Err(bad(format!("{} columns, expected 11", cols.len())));
        }
        let num = |k: usize| {
            cols[k]
                .parse::<f64>()
                .map_err(|e| bad(format!("column {}: {e}", k + 1)))
        };
        let opt = |k: usize| {
            cols.get(k)
                .and_then(|c| c.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        rows.push(BitbrainsRow {
            time_s: num(0)? as i64,
            cores: num(1)?,
            cpu_capacity_mhz: num(2)?,
            cpu_mhz: num(3)?,
            memory_capacity_kb: num(5)?,
            memory_kb: num(6)?,
            disk_read_kbps: num(7)?,
            disk_write_kbps: num(8)?,
            net_rx_kbps: opt(9),
            net_tx_kbps: opt(10),
        });
    }
    if rows.is_empty() {
        return Err(DataError::Format {
            path: path.into(),
            line: 1,
            why: "no samples".into(),
        });
    }
    rows.sort_by_key(|r| r.time_s);
    Ok(rows)
}

/// One VM of the Bitbrains trace on a regular 5-minute grid.
#[derive(Debug, Clone)]
pub struct VmTrace {
    /// VM id, from the file name (`vm-001`).
    pub id: String,
    /// CPU usage in MHz.
    pub cpu_mhz: Series,
    /// Memory usage in KB.
    pub memory_kb: Series,
    /// Disk read plus write throughput in KB/s.
    pub disk_kbps: Series,
    /// CPU provisioned in MHz (the largest seen), the clipping bound of CPU forecasts.
    pub cpu_capacity_mhz: f64,
    /// Memory provisioned in KB (the largest seen).
    pub memory_capacity_kb: f64,
}

/// Grid step of the Bitbrains trace, seconds.
pub const STEP_S: i64 = 300;

/// Reads one Bitbrains CSV (optionally gzipped): `;`+tab separated, timestamps in Unix
/// seconds despite the header's "[ms]", irregular steps around 300 s and gaps. Samples are
/// averaged into 5-minute buckets; empty buckets are NaN (see [`crate::fill_gaps`]).
pub fn read_bitbrains(path: &Path) -> Result<VmTrace, DataError> {
    let id = vm_id(path);
    let mut rows: Vec<(i64, [f64; 6])> = bitbrains_rows(path)?
        .into_iter()
        .map(|r| {
            (
                r.time_s,
                [
                    r.cpu_capacity_mhz,
                    r.cpu_mhz,
                    r.memory_capacity_kb,
                    r.memory_kb,
                    r.disk_read_kbps,
                    r.disk_write_kbps,
                ],
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    let start = rows[0].0.div_euclid(STEP_S) * STEP_S;
    let end = rows[rows.len() - 1].0.div_euclid(STEP_S) * STEP_S;
    let n = ((end - start) / STEP_S + 1) as usize;
    let mut sums = vec![[0.0f64; 3]; n];
    let mut counts = vec![0usize; n];
    let (mut cpu_cap, mut mem_cap) = (0.0f64, 0.0f64);
    for (ts, r) in &rows {
        let k = ((ts - start) / STEP_S) as usize;
        sums[k][0] += r[1];
        sums[k][1] += r[3];
        sums[k][2] += r[4] + r[5];
        counts[k] += 1;
        cpu_cap = cpu_cap.max(r[0]);
        mem_cap = mem_cap.max(r[2]);
    }
    let col = |j: usize| Series {
        start_s: start,
        step_s: STEP_S,
        values: (0..n)
            .map(|k| {
                if counts[k] == 0 {
                    f64::NAN
                } else {
                    sums[k][j] / counts[k] as f64
                }
            })
            .collect(),
    };
    Ok(VmTrace {
        id,
        cpu_mhz: col(0),
        memory_kb: col(1),
        disk_kbps: col(2),
        cpu_capacity_mhz: cpu_cap,
        memory_capacity_kb: mem_cap,
    })
}

/// The `.csv.gz` / `.csv` files of a Bitbrains-format folder, sorted by name.
pub fn bitbrains_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.into(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".csv.gz") || n.ends_with(".csv"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads an M4 file (`"V1","V2",...` header, one series per row, id first, ragged rows).
pub fn read_m4(path: &Path) -> Result<Vec<(String, Vec<f64>)>, DataError> {
    let mut out = Vec::new();
    for line in data_lines(path)? {
        let (line_no, line) = line?;
        let mut cols = line.split(',').map(|c| c.trim().trim_matches('"'));
        let id = cols.next().unwrap_or_default().to_string();
        let values: Result<Vec<f64>, _> = cols
            .filter(|c| !c.is_empty())
            .map(str::parse::<f64>)
            .collect();
        let values = values.map_err(|e| DataError::Format {
            path: path.into(),
            line: line_no,
            why: e.to_string(),
        })?;
        out.push((id, values));
    }
    Ok(out)
}

/// The shared data folder: `UMBRA_DATA_DIR`, else `../shared/data` beside the project root.
/// The project root is where this crate was built, or, when that folder is gone, the nearest
/// one above the working directory that has `../shared/data` beside it: cargo reuses a build
/// made from another checkout of the same sources when they share a target folder, and the
/// path compiled in then names that checkout.
pub fn shared_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("UMBRA_DATA_DIR") {
        return PathBuf::from(d);
    }
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if built.is_dir() {
        return built;
    }
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            cwd.ancestors()
                .map(|a| a.join("../shared/data"))
                .find(|d| d.is_dir())
        })
        .unwrap_or(built)
}
