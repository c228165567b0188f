//! The ONNX Runtime environment: finding `libonnxruntime.so`, loading it
//! once per process, and saying plainly how to get it when it is missing.
//!
//! `ort::init()` panics when the library is absent; Warden only ever uses
//! `ort::init_from(path)` and turns every failure into a message.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use warden_core::config::DEFAULT_RUNTIME_DIR;

/// The command that fetches the library, quoted in error messages.
pub const SETUP_COMMAND: &str = "./scripts/setup.sh";

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No library found anywhere Warden looks.
    #[error(
        "ONNX Runtime library not found (looked for {looked}). Fetch it with `{SETUP_COMMAND}` from the Warden repository, or point runtime.onnxruntime or ORT_DYLIB_PATH at libonnxruntime.so"
    )]
    Missing {
        /// Where Warden looked.
        looked: String,
    },
    /// The file exists but is not a usable ONNX Runtime.
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What ort said.
        message: String,
    },
    /// Already initialized from a different file in this process.
    #[error("ONNX Runtime is already loaded from {0}")]
    AlreadyLoaded(PathBuf),
}

/// A loaded ONNX Runtime, shared by every model in the process.
#[derive(Debug)]
pub struct Runtime {
    env: Environment,
    path: PathBuf,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

impl Runtime {
    /// Finds the library (`configured`, then `$ORT_DYLIB_PATH`, then
    /// `.runtime/lib/` under the working directory or an ancestor of the
    /// executable) and loads it. Idempotent within a process.
    pub fn init(configured: Option<&Path>) -> Result<&'static Runtime, RuntimeError> {
        let path = locate(configured)?;
        if let Some(rt) = RUNTIME.get() {
            return if rt.path == path {
                Ok(rt)
            } else {
                Err(RuntimeError::AlreadyLoaded(rt.path.clone()))
            };
        }
        let load = |message: String| RuntimeError::Load {
            path: path.clone(),
            message,
        };
        let env = ort::init_from(&path)
            .map_err(|e| load(e.to_string()))?
            .with_name("warden")
            .with_telemetry(false)
            .build()
            .map_err(|e| load(e.to_string()))?;
        // A concurrent init with the same path may have won the race; either is fine.
        Ok(RUNTIME.get_or_init(|| Runtime { env, path }))
    }

    /// The ONNX Runtime environment sessions are built in.
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    /// Where the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn locate(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(RuntimeError::Missing {
                looked: format!("{} (runtime.onnxruntime)", p.display()),
            })
        };
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RuntimeError::Missing {
                looked: format!("{} (ORT_DYLIB_PATH)", p.display()),
            })
        };
    }
    let mut dirs = vec![PathBuf::from(DEFAULT_RUNTIME_DIR)];
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(
            exe.ancestors()
                .skip(1)
                .take(4)
                .map(|a| a.join(DEFAULT_RUNTIME_DIR)),
        );
    }
    for dir in &dirs {
        if let Some(lib) = newest_library(dir) {
            return Ok(lib);
        }
    }
    Err(RuntimeError::Missing {
        looked: dirs
            .iter()
            .map(|d| format!("{}/libonnxruntime.so*", d.display()))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn newest_library(dir: &Path) -> Option<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .filter(|p| p.is_file())
        .collect();
    libs.sort();
    libs.pop()
}
