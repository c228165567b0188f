//! The model repository (docs/models.md): a folder with one subfolder per model,
//! each holding `model.toml` and numbered version folders with
//! `model.onnx`. The highest version is served unless the card pins one.
//!
//! Loading checks every card and every graph; any problem refuses the start
//! with a message naming the file. Pickle files are never loaded.
//!
//! A model can be reloaded while serving ([`Repository::reload`], the
//! management API's `POST /admin/models/{model}/reload`): its folder is
//! loaded and checked again off to the side, and only a model that loads
//! replaces the one serving; requests already holding the old one finish on
//! it. A reload that fails changes nothing, alerts, and says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::card::{CardDefaults, ModelCard};
use crate::engine::{Backend, OnnxBackend, PoolSettings};
use crate::integrity::{self, Placement, SignatureFile, Trust};
use crate::runtime::Runtime;
use crate::sealed::SealKey;
use warden_core::metrics::Alert;
use zeroize::Zeroizing;

/// One loaded version of a model.
#[derive(Debug)]
pub struct ModelVersion {
    /// The version number (its folder name).
    pub version: u64,
    /// The engine serving it.
    pub backend: Arc<dyn Backend>,
}

/// A model and its loaded versions.
#[derive(Debug)]
pub struct Model {
    /// The model name (its folder name).
    pub name: String,
    /// The checked card.
    pub card: ModelCard,
    /// Versions by number.
    pub versions: BTreeMap<u64, Arc<ModelVersion>>,
    /// The version served when none is named.
    pub default_version: u64,
    /// The card's defenses, with their state.
    pub guards: Guards,
}

/// The run-time side of a card's defenses.
#[derive(Debug, Default)]
pub struct Guards {
    /// Out-of-distribution detector.
    pub ood: Option<crate::defenses::ood::OodDetector>,
    /// Extraction monitor (per-principal state; shared with the model a
    /// reload replaces when the feature space and settings are the same).
    pub extraction: Option<Arc<crate::defenses::extraction::Monitor>>,
    /// Query-similarity store (shared with the model a reload replaces when
    /// the input and settings are the same), and the watched input's
    /// element bounds it quantizes with.
    pub similarity: Option<Similarity>,
}

/// The run-time side of `[defenses.similarity]`.
#[derive(Debug, Clone)]
pub struct Similarity {
    /// The in-memory store (used when no shared store answers).
    pub store: Arc<crate::defenses::similarity::Store>,
    /// Per element of a row, its bounds.
    pub bounds: Arc<[(f64, f64)]>,
}

impl Guards {
    /// Builds the defenses of `card`; `dir` is the model folder.
    pub fn load(card: &ModelCard, dir: &Path) -> Result<Self, String> {
        Ok(Self {
            ood: card
                .defenses
                .out_of_distribution
                .as_ref()
                .zip(card.defended())
                .map(|(o, input)| crate::defenses::ood::OodDetector::load(o, input, dir))
                .transpose()?,
            extraction: card
                .defenses
                .extraction
                .clone()
                .map(|s| Arc::new(crate::defenses::extraction::Monitor::new(s))),
            similarity: card
                .defenses
                .similarity
                .clone()
                .zip(card.defended())
                .map(|(s, input)| Similarity {
                    store: Arc::new(crate::defenses::similarity::Store::new(s)),
                    bounds: (0..input.fixed_row_len().unwrap_or(0))
                        .map(|c| input.bounds(c).unwrap_or((0.0, 1.0)))
                        .collect(),
                }),
        })
    }
}

impl Model {
    /// The default version, or the one named in a URL (`None` if absent or not a number).
    pub fn version(&self, requested: Option<&str>) -> Option<&Arc<ModelVersion>> {
        match requested {
            None => self.versions.get(&self.default_version),
            Some(v) => v.parse::<u64>().ok().and_then(|v| self.versions.get(&v)),
        }
    }
}

/// Every model Warden serves.
#[derive(Debug, Default)]
pub struct Repository {
    /// Swapped whole on a reload; readers take a snapshot (one atomic load).
    models: ArcSwap<BTreeMap<String, Arc<Model>>>,
    /// How the models were loaded, for reloads (`None`: built from models,
    /// nothing to reload from).
    source: Option<Source>,
    /// Held while a reload runs.
    reloading: std::sync::Mutex<()>,
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// No folder with a `model.toml` by that name.
    #[error("no model folder by that name")]
    NoSuchModel,
    /// The folder did not load; the model loaded before keeps serving.
    #[error(transparent)]
    Load(RepositoryError),
}

/// Where the models came from and how they were loaded.
#[derive(Debug)]
struct Source {
    dir: PathBuf,
    runtime: &'static Runtime,
    pool: PoolSettings,
    card: CardDefaults,
    security: ModelSecurity,
}

/// Why the repository could not be loaded. Names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RepositoryError {
    /// The offending file or folder.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

fn error(path: &Path, message: impl Into<String>) -> RepositoryError {
    RepositoryError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// How to load models.
#[derive(Debug, Clone, Copy)]
pub struct LoadSettings<'r> {
    /// The ONNX Runtime.
    pub runtime: &'static Runtime,
    /// Session pool sizing.
    pub pool: PoolSettings,
    /// Defaults from the server config.
    pub card: CardDefaults,
    /// Signature trust and the encryption key.
    pub security: &'r ModelSecurity,
}

/// No trusted keys, no signature required, no encryption key: signatures
/// present are still checked (and fail, their key being unknown).
pub static UNSIGNED: ModelSecurity = ModelSecurity {
    trust: Trust {
        keys: Vec::new(),
        require_signature: false,
    },
    seal_key: None,
};

/// What model files are checked and decrypted with.
#[derive(Debug, Clone, Default)]
pub struct ModelSecurity {
    /// Trusted signing keys, and whether signatures are required.
    pub trust: Trust,
    /// The key of `model.onnx.enc` files (shared with the audit step's
    /// raw-input snapshots).
    pub seal_key: Option<Arc<SealKey>>,
}

/// A version folder's model, read (and decrypted) into memory and checked:
/// the plaintext graph, wiped when dropped.
pub fn read_version(
    vdir: &Path,
    model: &str,
    version: u64,
    card: &ModelCard,
    security: &ModelSecurity,
) -> Result<(Zeroizing<Vec<u8>>, String), RepositoryError> {
    let at = Placement { model, version };
    let plain_path = vdir.join("model.onnx");
    let sealed_path = vdir.join("model.onnx.enc");
    let onnx = match (plain_path.is_file(), sealed_path.is_file()) {
        (true, true) => {
            return Err(error(
                vdir,
                "both model.onnx and model.onnx.enc are present: keep one",
            ));
        }
        (true, false) => Zeroizing::new(
            std::fs::read(&plain_path)
                .map_err(|e| error(&plain_path, format!("cannot read: {e}")))?,
        ),
        (false, true) => {
            let sealed = std::fs::read(&sealed_path)
                .map_err(|e| error(&sealed_path, format!("cannot read: {e}")))?;
            let key = security.seal_key.as_ref().ok_or_else(|| {
                error(
                    &sealed_path,
                    "the model is encrypted, and no [encryption] key is configured",
                )
            })?;
            key.open(&sealed, &crate::sealed::model_context(model, version))
                .map_err(|e| error(&sealed_path, e.to_string()))?
        }
        (false, false) => return Err(error(vdir, "no model.onnx (or model.onnx.enc)")),
    };
    let sig_path = vdir.join("model.onnx.sig");
    let signature: Option<SignatureFile> = if sig_path.is_file() {
        let text = std::fs::read_to_string(&sig_path)
            .map_err(|e| error(&sig_path, format!("cannot read: {e}")))?;
        Some(
            serde_json::from_str(&text)
                .map_err(|_| error(&sig_path, "not a model signature file"))?,
        )
    } else {
        None
    };
    let digest = integrity::sha256(&onnx);
    let checked = integrity::check(
        at,
        &digest,
        card.pinned_sha256.get(&version).map(String::as_str),
        signature.as_ref(),
        card.require_signature,
        &security.trust,
    )
    .map_err(|e| {
        let file = if sealed_path.is_file() {
            sealed_path
        } else {
            plain_path
        };
        error(&file, e.0)
    })?;
    Ok((onnx, checked))
}

impl Repository {
    /// Loads every model under `dir`.
    pub fn load(dir: &Path, settings: LoadSettings<'_>) -> Result<Self, RepositoryError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| error(dir, format!("cannot read the model repository: {e}")))?;
        let mut models = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| error(dir, e.to_string()))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_dir() || name.starts_with('.') {
                continue;
            }
            if !path.join("model.toml").is_file() {
                tracing::warn!(folder = %path.display(), "skipping a folder without model.toml");
                continue;
            }
            let model = load_named(dir, &name, settings)?;
            models.insert(name, Arc::new(model));
        }
        Ok(Self {
            models: ArcSwap::from_pointee(models),
            source: Some(Source {
                dir: dir.to_owned(),
                runtime: settings.runtime,
                pool: settings.pool,
                card: settings.card,
                security: settings.security.clone(),
            }),
            reloading: std::sync::Mutex::default(),
        })
    }

    /// A repository from already-built models (tests, gateway mode).
    pub fn from_models(models: impl IntoIterator<Item = Model>) -> Self {
        Self {
            models: ArcSwap::from_pointee(
                models
                    .into_iter()
                    .map(|m| (m.name.clone(), Arc::new(m)))
                    .collect(),
            ),
            source: None,
            reloading: std::sync::Mutex::default(),
        }
    }

    /// A model by name.
    pub fn get(&self, name: &str) -> Option<Arc<Model>> {
        self.models.load().get(name).cloned()
    }

    /// Every model, by name, as of now.
    pub fn models(&self) -> Vec<Arc<Model>> {
        self.models.load().values().cloned().collect()
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.models.load().len()
    }

    /// Whether no model is loaded.
    pub fn is_empty(&self) -> bool {
        self.models.load().is_empty()
    }

    /// Loads model `name` from its folder again (card, versions, integrity,
    /// defenses) and, only if that succeeds, serves it instead of the one
    /// loaded now; a model new on disk is added. Blocking (it reads files
    /// and builds ONNX Runtime sessions): call it off the async executor.
    ///
    /// On failure nothing changes, a `model_reload_failed` alert is raised
    /// and the error names the file. A version that fails its integrity
    /// check is skipped as at start (an older one that passes serves, with
    /// a `model_integrity_failed` alert). The extraction monitor's
    /// per-principal state and the query-similarity store carry over unless
    /// their settings or the watched input changed.
    pub fn reload(&self, name: &str) -> Result<Arc<Model>, ReloadError> {
        let Some(source) = &self.source else {
            return Err(ReloadError::NoSuchModel);
        };
        if !warden_core::is_model_name(name) || !source.dir.join(name).join("model.toml").is_file()
        {
            return Err(ReloadError::NoSuchModel);
        }
        // One reload at a time: two at once would load the same files twice.
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let settings = LoadSettings {
            runtime: source.runtime,
            pool: source.pool,
            card: source.card,
            security: &source.security,
        };
        let model = match load_named(&source.dir, name, settings) {
            Ok(mut m) => {
                if let Some(old) = self.get(name) {
                    keep_extraction_state(&old, &mut m);
                    keep_similarity_state(&old, &mut m);
                }
                Arc::new(m)
            }
            Err(e) => {
                Alert::ModelReloadFailed.count();
                tracing::error!(
                    alert = Alert::ModelReloadFailed.as_str(),
                    model = %name,
                    error = %e,
                    "model reload failed; the loaded model keeps serving"
                );
                return Err(ReloadError::Load(e));
            }
        };
        self.models.rcu(|models| {
            let mut next = BTreeMap::clone(models);
            next.insert(name.to_owned(), Arc::clone(&model));
            next
        });
        Ok(model)
    }
}

/// The query-similarity store survives a reload when its fingerprints
/// still mean the same thing: the same settings over the same element
/// bounds (the quantization grid).
fn keep_similarity_state(old: &Model, new: &mut Model) {
    if let (Some(before), Some(after)) = (&old.guards.similarity, &mut new.guards.similarity)
        && before.bounds == after.bounds
        && before.store.settings() == after.store.settings()
    {
        after.store = Arc::clone(&before.store);
    }
}

/// The extraction monitor's per-principal state survives a reload when it
/// still means the same thing: the same settings over the same watched
/// input (shape, features and the training statistics distances are
/// standardized with).
/// Otherwise the reloaded model starts afresh.
fn keep_extraction_state(old: &Model, new: &mut Model) {
    if old.card.defended() == new.card.defended()
        && old.card.defenses.extraction == new.card.defenses.extraction
        && let Some(monitor) = &old.guards.extraction
    {
        new.guards.extraction = Some(Arc::clone(monitor));
    }
}

/// Loads the model in folder `dir/name`, logging what it serves.
fn load_named(
    dir: &Path,
    name: &str,
    settings: LoadSettings<'_>,
) -> Result<Model, RepositoryError> {
    let path = dir.join(name);
    if !warden_core::is_model_name(name) {
        return Err(error(
            &path,
            "model folder names are 1-64 letters, digits, '-', '_' or '.'",
        ));
    }
    let model = load_model(&path, name.to_owned(), settings)?;
    tracing::info!(
        model = %name,
        versions = ?model.versions.keys().collect::<Vec<_>>(),
        serving = model.default_version,
        "model loaded"
    );
    Ok(model)
}

fn load_model(
    dir: &Path,
    name: String,
    settings: LoadSettings<'_>,
) -> Result<Model, RepositoryError> {
    let card_path = dir.join("model.toml");
    let mut card =
        ModelCard::load(&card_path, settings.card).map_err(|e| error(&card_path, e.0))?;
    if card.upstream.is_some() {
        return load_gateway(dir, name, card, settings);
    }
    let mut versions = BTreeMap::new();
    let mut refused = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| error(dir, e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| error(dir, e.to_string()))?;
        let Some(version) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let vdir = entry.path();
        if !vdir.is_dir() {
            continue;
        }
        if has_pickle(&vdir) {
            return Err(error(
                &vdir,
                "pickle files are never loaded (they execute code); export the model to ONNX",
            ));
        }
        // Integrity first: a version whose file is changed, unsigned when
        // it must be, signed by an unknown key, or not decryptable is not
        // served; an older version that passes serves instead, and an alert
        // says so.
        let (onnx, checked) = match read_version(&vdir, &name, version, &card, settings.security) {
            Ok(read) => read,
            Err(e) => {
                Alert::ModelIntegrityFailed.count();
                tracing::error!(
                    alert = Alert::ModelIntegrityFailed.as_str(),
                    model = %name,
                    version,
                    error = %e,
                    "model version refused"
                );
                refused.push((version, e));
                continue;
            }
        };
        let onnx_path = vdir.join("model.onnx");
        // Ids the card leaves open are bounded by the graph's lookup tables
        // (before the backend is built, so its warm-up uses valid ids).
        card.bound_ids(&crate::graph::lookup_tables(&onnx))
            .map_err(|e| error(&onnx_path, e.to_string()))?;
        let backend = OnnxBackend::load(settings.runtime, &onnx, &card, settings.pool)
            .map_err(|m| error(&onnx_path, m))?;
        // Dimensions any version ties together are checked in every request.
        for group in backend.tied_dims() {
            if !card.tied_dims.contains(group) {
                card.tied_dims.push(group.clone());
            }
        }
        tracing::info!(model = %name, version, sha256 = %hex::encode(integrity::sha256(&onnx)), integrity = %checked, "model version checked");
        versions.insert(
            version,
            Arc::new(ModelVersion {
                version,
                backend: Arc::new(backend),
            }),
        );
    }
    // Nothing loadable: the start is refused, naming the newest refusal.
    if versions.is_empty()
        && let Some((_, e)) = refused.into_iter().max_by_key(|(v, _)| *v)
    {
        return Err(e);
    }
    let default_version = match card.pinned_version {
        Some(v) if versions.contains_key(&v) => v,
        Some(v) => {
            return Err(error(
                &card_path,
                format!("version = {v}, but there is no loadable folder {v}/ (see the log)"),
            ));
        }
        None => *versions
            .keys()
            .next_back()
            .ok_or_else(|| error(dir, "no version folder (e.g. 1/model.onnx)"))?,
    };
    let guards = Guards::load(&card, dir).map_err(|m| error(&card_path, m))?;
    Ok(Model {
        name,
        card,
        versions,
        default_version,
        guards,
    })
}

/// A model whose card names an `[upstream]`: one version (1, or the
/// card's `version`), answered by the upstream server. Version folders
/// would be ambiguous, so they are refused.
fn load_gateway(
    dir: &Path,
    name: String,
    card: ModelCard,
    settings: LoadSettings<'_>,
) -> Result<Model, RepositoryError> {
    let card_path = dir.join("model.toml");
    let entries = std::fs::read_dir(dir).map_err(|e| error(dir, e.to_string()))?;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        if file_name.to_str().is_some_and(|n| n.parse::<u64>().is_ok()) {
            return Err(error(
                &entry.path(),
                "the card names an [upstream], so this model has no local versions: remove the folder or the [upstream] table",
            ));
        }
    }
    let version = card.pinned_version.unwrap_or(1);
    let backend =
        crate::gateway::GatewayBackend::load(&name, &card, dir, settings.pool.queue_timeout)
            .map_err(|m| error(&card_path, m))?;
    tracing::info!(model = %name, version, upstream = ?backend, "model served by an upstream server");
    let guards = Guards::load(&card, dir).map_err(|m| error(&card_path, m))?;
    Ok(Model {
        name,
        card,
        versions: BTreeMap::from([(
            version,
            Arc::new(ModelVersion {
                version,
                backend: Arc::new(backend),
            }),
        )]),
        default_version: version,
        guards,
    })
}

fn has_pickle(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            [".pkl", ".pickle", ".joblib"]
                .iter()
                .any(|ext| n.ends_with(ext))
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::OutputPolicy;
    use crate::request::{Protocol, parse};

    /// The repo's ONNX Runtime, fetched by scripts/setup.sh. Tests fail (never
    /// skip) without it.
    pub(crate) fn runtime() -> &'static Runtime {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(warden_core::config::DEFAULT_RUNTIME_DIR);
        let lib = std::fs::read_dir(&dir)
            .ok()
            .and_then(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().contains("libonnxruntime.so"))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no ONNX Runtime in {}: run ./scripts/setup.sh",
                    dir.display()
                )
            });
        Runtime::init(Some(&lib)).unwrap()
    }

    pub(crate) fn demo_repository() -> Repository {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let settings = LoadSettings {
            runtime: runtime(),
            pool: PoolSettings {
                sessions: 2,
                queue: 8,
                queue_timeout: std::time::Duration::from_secs(2),
            },
            card: CardDefaults {
                max_batch: 64,
                range_tolerance: 0.25,
            },
            security: &UNSIGNED,
        };
        Repository::load(&dir, settings).unwrap()
    }

    /// Fixtures of the first demo models: rows of features, labels and
    /// probabilities (scripts/train_demo_models.py).
    #[derive(serde::Deserialize)]
    struct RowFixture {
        inputs: Vec<Vec<f64>>,
        labels: Vec<String>,
        probabilities: Vec<Vec<f64>>,
    }

    /// Fixtures of the tensor demo models: cases of input and output
    /// tensors (scripts/train_tensor_models.py).
    #[derive(serde::Deserialize)]
    struct TensorFixture {
        cases: Vec<Case>,
    }

    #[derive(serde::Deserialize)]
    struct Case {
        inputs: Vec<serde_json::Value>,
        outputs: Vec<FixtureOutput>,
    }

    #[derive(serde::Deserialize)]
    struct FixtureOutput {
        name: String,
        shape: Vec<usize>,
        data: Vec<serde_json::Value>,
    }

    /// Every demo model agrees with Python onnxruntime on every output of
    /// every fixture, through the request parser (v1 rows for the tabular
    /// models, v2 tensors for the others) and the engine: integers equal,
    /// floats within 1e-5 (relative to the value for large ones).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_models_agree_with_python_onnxruntime() {
        let repo = demo_repository();
        assert_eq!(repo.len(), 7);
        for model in repo.models() {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../models")
                .join(&model.name)
                .join("fixtures.json");
            let text = std::fs::read(&path).unwrap();
            let version = model.version(None).unwrap();
            if let Ok(fixture) = serde_json::from_slice::<RowFixture>(&text) {
                let body = serde_json::to_vec(&serde_json::json!({ "instances": fixture.inputs }))
                    .unwrap();
                let request = parse(Protocol::V1, &model.card, &body, 32).unwrap();
                let rows = request.rows();
                let answer = version.backend.infer(request.batch).await.unwrap();
                let labels: Vec<&str> = crate::task::class_indices(&model.card, &answer)
                    .unwrap()
                    .iter()
                    .map(|&l| model.card.classes()[l].as_str())
                    .collect();
                assert_eq!(labels, fixture.labels, "{}", model.name);
                let probs = crate::task::probabilities(&model.card, &answer).unwrap();
                close(
                    &model.name,
                    &probs.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                    &fixture.probabilities.concat(),
                );
                // The output policy keeps labels and only rounds probabilities.
                let policy = OutputPolicy {
                    probabilities: true,
                    ..OutputPolicy::DEFAULT
                };
                let shown = policy
                    .apply(
                        &model.card,
                        &answer,
                        rows,
                        &policy.default_outputs(&model.card),
                    )
                    .unwrap();
                assert_eq!(
                    shown.tensors[0].data,
                    crate::policy::ShownData::Labels(
                        fixture.labels.iter().map(String::as_str).collect()
                    ),
                );
                continue;
            }
            let fixture: TensorFixture = serde_json::from_slice(&text).unwrap();
            assert!(!fixture.cases.is_empty());
            for (k, case) in fixture.cases.into_iter().enumerate() {
                let body =
                    serde_json::to_vec(&serde_json::json!({ "inputs": case.inputs })).unwrap();
                let request = parse(Protocol::V2, &model.card, &body, 32)
                    .unwrap_or_else(|e| panic!("{} case {k}: {e:?}", model.name));
                let answer = version.backend.infer(request.batch).await.unwrap();
                for want in &case.outputs {
                    let Some(i) = model.card.output_index(&want.name) else {
                        continue;
                    };
                    let got = &answer[i];
                    assert_eq!(got.shape, want.shape, "{} {}", model.name, want.name);
                    let expected: Vec<f64> =
                        want.data.iter().map(|v| v.as_f64().unwrap()).collect();
                    let values: Vec<f64> = (0..got.data.len())
                        .map(|j| got.data.number(j).unwrap())
                        .collect();
                    close(
                        &format!("{} case {k} {}", model.name, want.name),
                        &values,
                        &expected,
                    );
                }
            }
        }
    }

    fn close(what: &str, got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{what} value {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn a_card_that_disagrees_with_its_graph_is_refused() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/iris");
        let tmp = std::env::temp_dir().join(format!("warden-bad-card-{}", std::process::id()));
        let model_dir = tmp.join("iris");
        std::fs::create_dir_all(model_dir.join("1")).unwrap();
        std::fs::copy(src.join("1/model.onnx"), model_dir.join("1/model.onnx")).unwrap();
        let card = std::fs::read_to_string(src.join("model.toml")).unwrap();
        let settings = LoadSettings {
            runtime: runtime(),
            pool: PoolSettings {
                sessions: 1,
                queue: 1,
                queue_timeout: std::time::Duration::from_secs(2),
            },
            card: CardDefaults {
                max_batch: 64,
                range_tolerance: 0.25,
            },
            security: &UNSIGNED,
        };
        // One feature too few.
        let cut = card.rfind("[[input.features]]").unwrap();
        let output = card.find("[output]").unwrap();
        std::fs::write(
            model_dir.join("model.toml"),
            format!("{}{}", &card[..cut], &card[output..]),
        )
        .unwrap();
        let e = Repository::load(&tmp, settings).unwrap_err();
        assert!(e.message.contains("dimension 1 is 4 in the graph"), "{e}");
        // Wrong input name.
        std::fs::write(
            model_dir.join("model.toml"),
            card.replace("name = \"input\"", "name = \"x\""),
        )
        .unwrap();
        let e = Repository::load(&tmp, settings).unwrap_err();
        assert!(e.message.contains("does not declare"), "{e}");
        // Wrong number of classes.
        std::fs::write(
            model_dir.join("model.toml"),
            card.replace("\"virginica\"]", "\"virginica\", \"extra\"]"),
        )
        .unwrap();
        let e = Repository::load(&tmp, settings).unwrap_err();
        assert!(e.to_string().contains("model.onnx"), "{e}");
        // A pickle next to the graph refuses the model.
        std::fs::write(model_dir.join("model.toml"), &card).unwrap();
        std::fs::write(model_dir.join("1/model.pkl"), b"x").unwrap();
        let e = Repository::load(&tmp, settings).unwrap_err();
        assert!(e.message.contains("pickle"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

#[cfg(test)]
mod batching_tests {
    use super::tests::runtime;
    use super::*;
    use crate::engine::{Batch, EngineError};
    use warden_tensor::{Tensor, TensorData};

    /// Rows of iris features as a batch.
    fn rows(values: Vec<f32>) -> Batch {
        let n = values.len() / 4;
        Batch {
            rows: n,
            inputs: vec![Tensor {
                name: "input".into(),
                shape: vec![n, 4],
                data: TensorData::F32(values),
            }],
        }
    }

    fn iris(queue: usize) -> (Arc<dyn Backend>, serde_json::Value) {
        iris_with(queue, std::time::Duration::from_secs(2), true)
    }

    fn iris_with(
        queue: usize,
        queue_timeout: std::time::Duration,
        batching: bool,
    ) -> (Arc<dyn Backend>, serde_json::Value) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/iris");
        let text = std::fs::read_to_string(dir.join("model.toml")).unwrap();
        let card = ModelCard::parse(
            &format!("dynamic_batching = {batching}\n{text}"),
            CardDefaults {
                max_batch: 64,
                range_tolerance: 0.25,
            },
        )
        .unwrap();
        let onnx = std::fs::read(dir.join("1/model.onnx")).unwrap();
        let settings = PoolSettings {
            sessions: 2,
            queue,
            queue_timeout,
        };
        let backend = OnnxBackend::load(runtime(), &onnx, &card, settings).unwrap();
        let fixture =
            serde_json::from_slice(&std::fs::read(dir.join("fixtures.json")).unwrap()).unwrap();
        (Arc::new(backend), fixture)
    }

    /// Concurrent requests of different sizes are batched together and each
    /// gets exactly its own rows back; with batching off, each runs alone
    /// and the answers are the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_each_get_their_own_rows() {
        for batching in [true, false] {
            each_gets_its_own_rows(batching).await;
        }
    }

    async fn each_gets_its_own_rows(batching: bool) {
        let (backend, fixture) = iris_with(1024, std::time::Duration::from_secs(2), batching);
        let inputs: Vec<Vec<f32>> = fixture["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect();
        let labels = fixture["label_indices"].as_array().unwrap();
        let mut tasks = Vec::new();
        for round in 0..20 {
            for start in 0..inputs.len() {
                // Requests of 1..=3 rows starting at different fixture rows.
                let n = 1 + (start + round) % 3;
                let rows: Vec<usize> = (start..start + n).map(|i| i % inputs.len()).collect();
                let values: Vec<f32> = rows.iter().flat_map(|&i| inputs[i].clone()).collect();
                let backend = Arc::clone(&backend);
                tasks.push(tokio::spawn(async move {
                    let batch = super::batching_tests::rows(values);
                    (rows.clone(), backend.infer(batch).await)
                }));
            }
        }
        for task in tasks {
            let (rows, result) = task.await.unwrap();
            let answer = result.unwrap();
            let expected: Vec<i64> = rows.iter().map(|&i| labels[i].as_i64().unwrap()).collect();
            assert_eq!(answer[0].data, TensorData::I64(expected));
            assert_eq!(answer[1].data.len(), rows.len() * 3);
        }
    }

    /// Past the queue limit the answer is `overloaded`, not an unbounded wait.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_answers_overloaded() {
        let (backend, _) = iris(4);
        // On one thread nothing drains until this task yields, so the queue fills.
        let futures: Vec<_> = (0..10)
            .map(|_| backend.infer(rows(vec![5.1, 3.5, 1.4, 0.2])))
            .collect();
        let results = futures_join(futures).await;
        let overloaded = results
            .iter()
            .filter(|r| matches!(r, Err(EngineError::Overloaded)))
            .count();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!((ok, overloaded), (4, 6));
    }

    /// A request that waited past the queue timeout is shed, not run.
    #[tokio::test(flavor = "current_thread")]
    async fn requests_past_the_queue_timeout_are_shed() {
        let (backend, _) = iris_with(16, std::time::Duration::ZERO, true);
        let futures: Vec<_> = (0..3)
            .map(|_| backend.infer(rows(vec![5.1, 3.5, 1.4, 0.2])))
            .collect();
        for r in futures_join(futures).await {
            assert!(matches!(r, Err(EngineError::Overloaded)), "{r:?}");
        }
    }

    async fn futures_join<T>(futures: Vec<crate::engine::BoxFuture<'_, T>>) -> Vec<T> {
        // Poll every future once before awaiting any, as concurrent requests would arrive.
        let mut pinned: Vec<_> = futures.into_iter().map(Some).collect();
        let mut results: Vec<Option<T>> = pinned.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (slot, result) in pinned.iter_mut().zip(results.iter_mut()) {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => {
                            *result = Some(v);
                            *slot = None;
                        }
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        results.into_iter().map(|r| r.unwrap()).collect()
    }
}
