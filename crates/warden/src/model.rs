//! `warden model ...`: signing keys, detached signatures, the integrity
//! check `warden serve` makes, and encryption at rest of model files
//! (docs/tls.md, "Model integrity" and "Encryption at rest").

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use warden_core::SecretSource;
use warden_core::config::Overrides;
use warden_models::card::{CardDefaults, ModelCard};
use warden_models::{integrity, repository};

use crate::Failure;
use crate::cli::ModelCommand;
use crate::commands::{load_config, model_security, seal_key};

pub(crate) fn run(cmd: ModelCommand) -> Result<(), Failure> {
    match cmd {
        ModelCommand::Init {
            location,
            dir,
            sample,
            force,
            upstream,
            upstream_model,
            ca,
        } => {
            let config = load_config(&location, Overrides::default())?;
            let source = match upstream {
                Some(url) => crate::model_init::Source::Upstream {
                    url,
                    model: upstream_model,
                    ca,
                },
                None => crate::model_init::Source::Graph {
                    runtime_library: config.onnxruntime.clone(),
                },
            };
            crate::model_init::init(source, &dir, sample.as_deref(), force)
        }
        ModelCommand::Keygen { out } => keygen(&out),
        ModelCommand::Sign { key, name, file } => sign(&key, &name, &file),
        ModelCommand::Verify { location, dir } => {
            let config = load_config(&location, Overrides::default())?;
            verify(&config, &dir)
        }
        ModelCommand::Encrypt { location, file } => {
            let config = load_config(&location, Overrides::default())?;
            let key = seal_key(&config)?
                .ok_or_else(|| Failure::usage("no [encryption] key in this configuration"))?;
            let (model, version) = placement(&file)?;
            let plain = zeroize::Zeroizing::new(
                std::fs::read(&file)
                    .map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))?,
            );
            if plain.starts_with(warden_models::sealed::HEADER) {
                return Err(Failure::usage(format!(
                    "{} is already encrypted",
                    file.display()
                )));
            }
            let sealed = key
                .seal(
                    &plain,
                    &warden_models::sealed::model_context(&model, version),
                )
                .map_err(Failure::runtime)?;
            let mut out = file.clone().into_os_string();
            out.push(".enc");
            write_new(Path::new(&out), &sealed, 0o644)?;
            eprintln!(
                "wrote {}; remove {} (a folder with both is refused)",
                Path::new(&out).display(),
                file.display()
            );
            Ok(())
        }
        ModelCommand::Decrypt {
            location,
            file,
            out,
        } => {
            let config = load_config(&location, Overrides::default())?;
            let key = seal_key(&config)?
                .ok_or_else(|| Failure::usage("no [encryption] key in this configuration"))?;
            let (model, version) = placement(&file)?;
            let sealed = std::fs::read(&file)
                .map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))?;
            let plain = key
                .open(
                    &sealed,
                    &warden_models::sealed::model_context(&model, version),
                )
                .map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))?;
            write_new(&out, &plain, 0o600)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}

/// The model and version a file belongs to, from its place in the
/// repository (`<models>/<name>/<version>/model.onnx[.enc]`): signatures and
/// encryption are bound to it.
fn placement(file: &Path) -> Result<(String, u64), Failure> {
    let vdir = file.parent();
    let version = vdir
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse::<u64>().ok());
    let model = vdir
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .filter(|n| warden_core::is_model_name(n));
    match (model, version) {
        (Some(m), Some(v)) => Ok((m.to_owned(), v)),
        _ => Err(Failure::usage(format!(
            "{}: expected a file in the repository layout <models>/<name>/<version>/, which the signature and encryption are bound to",
            file.display()
        ))),
    }
}

fn keygen(out: &Path) -> Result<(), Failure> {
    let (private, public) = integrity::generate_key().map_err(Failure::runtime)?;
    let text = zeroize::Zeroizing::new(format!("{}\n", STANDARD.encode(&private)));
    write_new(out, text.as_bytes(), 0o600)?;
    println!("public_key = \"{}\"", STANDARD.encode(&public));
    eprintln!(
        "wrote the private key to {} (keep it off the servers); add to the configuration:\n  [[models.trusted_keys]]\n  name = \"release\"\n  public_key = \"{}\"",
        out.display(),
        STANDARD.encode(&public)
    );
    Ok(())
}

fn sign(key: &Path, name: &str, file: &Path) -> Result<(), Failure> {
    // Read as a secret: a key file others can read is refused.
    let secret = SecretSource::File {
        file: key.to_owned(),
    }
    .read(false)
    .map_err(|e| Failure::usage(format!("--key: {e}")))?;
    let pkcs8 = zeroize::Zeroizing::new(
        std::str::from_utf8(secret.expose())
            .ok()
            .and_then(|t| STANDARD.decode(t.trim()).ok())
            .ok_or_else(|| Failure::usage("--key: not a key from `warden model keygen`"))?,
    );
    let model =
        std::fs::read(file).map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))?;
    if model.starts_with(warden_models::sealed::HEADER) {
        return Err(Failure::usage(
            "this file is encrypted: sign the plaintext model.onnx, then encrypt it",
        ));
    }
    let (model_name, version) = placement(file)?;
    let at = integrity::Placement {
        model: &model_name,
        version,
    };
    let sig = integrity::sign(&pkcs8, name, at, &model)
        .map_err(|e| Failure::usage(format!("--key: {e}")))?;
    let mut out = file.to_owned().into_os_string();
    out.push(".sig");
    let text = serde_json::to_string_pretty(&sig).map_err(Failure::runtime)?;
    // Never over an existing signature: remove it first, on purpose.
    write_new(Path::new(&out), format!("{text}\n").as_bytes(), 0o644)?;
    println!("{}", Path::new(&out).display());
    eprintln!(
        "signed {} ({model_name} version {version}, sha256 {}) as {name}",
        file.display(),
        sig.sha256
    );
    Ok(())
}

fn verify(config: &warden_core::config::Config, dir: &Path) -> Result<(), Failure> {
    let version = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            Failure::usage(format!(
                "{}: not a version folder (e.g. models/iris/1)",
                dir.display()
            ))
        })?;
    let card_path = dir
        .parent()
        .map(|m| m.join("model.toml"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            Failure::usage(format!(
                "{}: no model.toml in the parent folder",
                dir.display()
            ))
        })?;
    let card = ModelCard::load(
        &card_path,
        CardDefaults {
            max_batch: config.default_max_batch,
            range_tolerance: config.range_tolerance,
        },
    )
    .map_err(|e| Failure::usage(format!("{}: {e}", card_path.display())))?;
    let security = model_security(config)?;
    let model = dir
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let (onnx, checked) = repository::read_version(dir, &model, version, &card, &security)
        .map_err(Failure::runtime)?;
    println!(
        "{}: OK (sha256 {}; checked: {checked})",
        dir.display(),
        hex::encode(integrity::sha256(&onnx))
    );
    Ok(())
}

/// Writes a new file (never over an existing one) with `mode`.
fn write_new(path: &Path, content: &[u8], mode: u32) -> Result<(), Failure> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(content))
        .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))
}
