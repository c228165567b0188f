//! `warden model init DIR [--sample FILE] [--force]`: a model card written
//! from the graph (docs/models.md, "Writing a card").
//!
//! Every input and output of the highest version's graph, with its
//! datatype and shape; a guessed task (a scikit-learn classifier's label
//! and probabilities → classification, one float output → regression,
//! anything else → tensor); the secure defaults (a classifier answers
//! labels only, a regressor its value, a tensor model nothing, except to
//! the `admin` role, which sees every output so that the model's owner can
//! check it through Warden); and comments saying what to fill in. A sample
//! of inputs fills training statistics, ranges, categories and id ranges.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use warden_models::engine::{GraphTensor, describe_graph};
use warden_models::runtime::Runtime;
use warden_tensor::DataType;

use crate::Failure;

/// What a sample says about one input: its rows (flattened), and the
/// largest size seen of each dimension after the batch.
#[derive(Debug, Default)]
struct Observed {
    numbers: Vec<Vec<f64>>,
    strings: Vec<String>,
    rows: usize,
    max_dims: Vec<usize>,
    /// Column names, for a tabular input read from a CSV header.
    columns: Vec<String>,
}

impl Observed {
    fn add_row(&mut self, dims: &[usize], numbers: Vec<f64>) {
        self.max_dims.resize(dims.len().max(self.max_dims.len()), 0);
        for (m, d) in self.max_dims.iter_mut().zip(dims) {
            *m = (*m).max(*d);
        }
        self.numbers.push(numbers);
        self.rows += 1;
    }
}

/// Where the tensors come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// The highest version's graph in the model folder.
    Graph {
        /// The ONNX Runtime library (config), if set.
        runtime_library: Option<PathBuf>,
    },
    /// An upstream server's model metadata (gateway mode).
    Upstream {
        /// Its base URL.
        url: String,
        /// The model's name there (default: the folder's).
        model: Option<String>,
        /// The CA of its certificate.
        ca: Option<PathBuf>,
    },
}

/// Runs `warden model init`.
pub(crate) fn init(
    source: Source,
    dir: &Path,
    sample: Option<&Path>,
    force: bool,
) -> Result<(), Failure> {
    let card_path = dir.join("model.toml");
    if card_path.exists() && !force {
        return Err(Failure::usage(format!(
            "{} exists; pass --force to overwrite it",
            card_path.display()
        )));
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_owned();
    let (inputs, outputs, tables, origin, upstream) = match source {
        Source::Graph { runtime_library } => {
            let (version, graph_path) = highest_version(dir)?;
            let onnx = std::fs::read(&graph_path)
                .map_err(|e| Failure::usage(format!("{}: {e}", graph_path.display())))?;
            let runtime = Runtime::init(runtime_library.as_deref()).map_err(Failure::runtime)?;
            let (inputs, outputs) = describe_graph(runtime, &onnx)
                .map_err(|e| Failure::usage(format!("{}: {e}", graph_path.display())))?;
            let tables = warden_models::graph::lookup_tables(&onnx);
            (
                inputs,
                outputs,
                tables,
                format!("{version}/model.onnx"),
                None,
            )
        }
        Source::Upstream { url, model, ca } => {
            if !dir.is_dir() {
                return Err(Failure::usage(format!("{}: not a folder", dir.display())));
            }
            let ca = ca
                .map(|c| {
                    std::fs::canonicalize(&c)
                        .map_err(|e| Failure::usage(format!("{}: {e}", c.display())))
                })
                .transpose()?;
            let mut table = toml::Table::new();
            table.insert("url".into(), url.clone().into());
            if let Some(m) = &model {
                table.insert("model".into(), m.clone().into());
            }
            if let Some(c) = &ca {
                table.insert("ca".into(), c.to_string_lossy().into_owned().into());
            }
            let text = toml::to_string(&table).map_err(Failure::usage)?;
            let settings = warden_models::card::Upstream::parse_table(&text)
                .map_err(|e| Failure::usage(format!("--upstream: {e}")))?;
            let remote = model.clone().unwrap_or_else(|| name.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Failure::runtime)?;
            let (inputs, outputs) = runtime
                .block_on(warden_models::gateway::upstream_tensors(
                    &settings, dir, &remote,
                ))
                .map_err(Failure::runtime)?;
            if inputs.is_empty() || outputs.is_empty() {
                return Err(Failure::runtime(format!(
                    "{url}: the metadata of {remote:?} lists no inputs or no outputs"
                )));
            }
            (
                inputs,
                outputs,
                HashMap::new(),
                format!("the metadata of {remote:?} at {url}"),
                Some(text),
            )
        }
    };
    for t in inputs.iter().chain(&outputs) {
        if let Err(kind) = &t.datatype {
            return Err(Failure::usage(format!(
                "{origin}: {:?} is {kind}, which Warden cannot serve (scikit-learn classifiers: export with options={{'zipmap': False}})",
                t.name
            )));
        }
    }
    let observed = match sample {
        Some(path) => read_sample(path, &inputs)?,
        None => HashMap::new(),
    };
    let mut text = card_text(
        &name, &origin, &inputs, &outputs, &tables, &observed, sample,
    );
    if let Some(table) = upstream {
        text.push_str(
            "\n# Gateway mode: this server answers for the model (docs/gateway.md).\n[upstream]\n",
        );
        text.push_str(&table);
    }
    std::fs::write(&card_path, text)
        .map_err(|e| Failure::runtime(format!("{}: {e}", card_path.display())))?;
    eprintln!(
        "wrote {} from {origin}: read it, fill in what it asks, then `warden serve`",
        card_path.display()
    );
    Ok(())
}

/// The highest `N/model.onnx` in `dir`.
fn highest_version(dir: &Path) -> Result<(u64, PathBuf), Failure> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?;
    entries
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u64>().ok()?;
            let graph = e.path().join("model.onnx");
            graph.is_file().then_some((v, graph))
        })
        .max_by_key(|(v, _)| *v)
        .ok_or_else(|| {
            Failure::usage(format!(
                "{}: no version folder with a graph (expected {}/1/model.onnx)",
                dir.display(),
                dir.display()
            ))
        })
}

/// The first dimension of every tensor is dynamic: the model takes batches.
fn batched(inputs: &[GraphTensor], outputs: &[GraphTensor]) -> bool {
    inputs
        .iter()
        .chain(outputs)
        .all(|t| t.shape.first() == Some(&-1))
}

fn datatype(t: &GraphTensor) -> DataType {
    t.datatype.clone().unwrap_or(DataType::F32)
}

/// The task a graph's outputs suggest.
enum Guess {
    Classification {
        label: usize,
        probabilities: usize,
        classes: Option<usize>,
    },
    Regression {
        output: usize,
    },
    Tensor,
}

fn guess(outputs: &[GraphTensor]) -> Guess {
    // scikit-learn classifiers (skl2onnx, zipmap off): a label [N] of INT64
    // or strings, then probabilities [N, classes].
    let label = outputs.iter().position(|o| {
        matches!(datatype(o), DataType::I64 | DataType::Bytes)
            && (o.shape.len() == 1 || (o.shape.len() == 2 && o.shape[1] == 1))
    });
    let probabilities = outputs
        .iter()
        .position(|o| matches!(datatype(o), DataType::F32 | DataType::F64) && o.shape.len() == 2);
    if let (Some(label), Some(probabilities)) = (label, probabilities) {
        let classes = usize::try_from(outputs[probabilities].shape[1]).ok();
        return Guess::Classification {
            label,
            probabilities,
            classes,
        };
    }
    match outputs {
        [one] if datatype(one).is_float() => Guess::Regression { output: 0 },
        _ => Guess::Tensor,
    }
}

fn list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

fn dims(shape: &[i64]) -> String {
    let d: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", d.join(", "))
}

/// A float as TOML (always with a decimal point or exponent).
fn float(v: f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { v };
    let s = format!("{}", (v * 1e6).round() / 1e6);
    if s.contains(['.', 'e', 'E']) || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        format!("{s}.0")
    }
}

/// Mean and population standard deviation.
fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = values.clone().count().max(1) as f64;
    let mean = values.clone().sum::<f64>() / n;
    let var = values.map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn card_text(
    name: &str,
    origin: &str,
    inputs: &[GraphTensor],
    outputs: &[GraphTensor],
    tables: &HashMap<String, u64>,
    observed: &HashMap<String, Observed>,
    sample: Option<&Path>,
) -> String {
    let mut t = String::new();
    let batched = batched(inputs, outputs);
    let task = guess(outputs);
    let _ = writeln!(
        t,
        "# Model card: {name}. Written by `warden model init` from {origin}{}.",
        sample.map_or(String::new(), |s| format!(
            " and the sample {}",
            s.display()
        ))
    );
    t.push_str(
        "# Read it through: lines marked FILL IN need you; docs/models.md explains every key.\n",
    );
    let _ = writeln!(
        t,
        "description = {:?}",
        format!("{name} (describe it here)")
    );
    let task_name = match task {
        Guess::Classification { .. } => "classification",
        Guess::Regression { .. } => "regression",
        Guess::Tensor => "tensor",
    };
    t.push_str(
        "# classification: a label and probabilities; regression: values; tensor: anything else.\n",
    );
    let _ = writeln!(t, "task = {task_name:?}");
    t.push_str(
        "# Most rows (entries of the batch dimension) one request may carry.\nmax_batch = 64\n",
    );
    if !batched {
        t.push_str(
            "# The graph fixes its first dimension: it takes no batch.\nbatch_dimension = false\n",
        );
    }
    for input in inputs {
        input_table(&mut t, input, batched, tables, observed.get(&input.name));
    }
    for output in outputs {
        t.push_str("\n[[outputs]]\n");
        let _ = writeln!(t, "name = {:?}", output.name);
        let _ = writeln!(t, "datatype = {:?}", datatype(output).as_str());
        let _ = writeln!(t, "shape = {}", dims(&output.shape));
    }
    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    match task {
        Guess::Classification {
            label,
            probabilities,
            classes,
        } => {
            t.push_str("\n[classification]\n");
            let _ = writeln!(t, "label = {:?}", outputs[label].name);
            let _ = writeln!(t, "probabilities = {:?}", outputs[probabilities].name);
            let n = classes.unwrap_or(2);
            let placeholder: Vec<String> = (0..n).map(|i| format!("class_{i}")).collect();
            let refs: Vec<&str> = placeholder.iter().map(String::as_str).collect();
            if classes.is_none() {
                t.push_str(
                    "# FILL IN: the graph does not fix the number of classes; list them all.\n",
                );
            }
            if datatype(&outputs[label]) == DataType::Bytes {
                t.push_str("# FILL IN: the class names exactly as the label output gives them, in the\n# order of the probabilities' columns (scikit-learn: model.classes_).\n");
            } else {
                t.push_str("# FILL IN: a name for each class index, in order (scikit-learn: model.classes_).\n");
            }
            let _ = writeln!(t, "classes = {}", list(&refs));
            t.push_str("\n# What callers see (docs/defenses.md): labels only by default, which slows\n# model extraction and blunts confidence-based membership inference.\n[policy]\noutput = \"label\"\ndecimals = 2\n");
            let others: Vec<&str> = (0..outputs.len())
                .filter(|&i| i != label && i != probabilities)
                .map(|i| names[i])
                .collect();
            t.push_str("\n# The model's owner checks the model through Warden: admin sees every output.\n[policy.roles.admin]\noutput = \"probabilities\"\n");
            if !others.is_empty() {
                let _ = writeln!(t, "outputs = {}", list(&others));
            }
        }
        Guess::Regression { output } => {
            t.push_str("\n[regression]\n");
            let _ = writeln!(t, "output = {:?}", outputs[output].name);
            t.push_str("\n# Values rounded to 2 decimals; a `clamp = [lo, hi]` keeps answers in a\n# declared range, `noise` adds Laplace noise of that scale (docs/defenses.md).\n[policy]\ndecimals = 2\n");
            let others: Vec<&str> = (0..outputs.len())
                .filter(|&i| i != output)
                .map(|i| names[i])
                .collect();
            if !others.is_empty() {
                let _ = writeln!(t, "\n[policy.roles.admin]\noutputs = {}", list(&others));
            }
        }
        Guess::Tensor => {
            t.push_str("\n# A tensor model shows nothing by default: raw logits and embeddings give\n# extraction and inversion attacks far more than a label. List, per role,\n# the outputs it may see (rounded to `decimals`).\n[policy]\ndecimals = 2\n");
            let _ = writeln!(t, "\n[policy.roles.admin]\noutputs = {}", list(&names));
        }
    }
    t.push_str(BUDGET);
    defenses_text(&mut t, inputs, batched, tables, observed);
    t
}

/// The budget every written card carries (docs/defenses.md, "Budgets").
const BUDGET: &str = "
# Budget (docs/defenses.md, \"Budgets\"): against a thief who distils the model
# from natural inputs no detector helps; only the number of answers does. Rows
# per principal per UTC day on this model, for every role but admin; the
# x-quota-remaining header shows what is left. Size it to your callers' use.
[budget]
per_day = 10000
";

/// Query similarity (docs/defenses.md, "Query-based attacks: similarity"),
/// acting by default where it applies: one numeric input of fixed size, at
/// least [`SIMILARITY_MIN_VALUES`] values a row, with known bounds.
fn defenses_text(
    t: &mut String,
    inputs: &[GraphTensor],
    batched: bool,
    tables: &HashMap<String, u64>,
    observed: &HashMap<String, Observed>,
) {
    let numeric: Vec<&GraphTensor> = inputs.iter().filter(|i| datatype(i).is_numeric()).collect();
    let why_not = match numeric.as_slice() {
        [] => return,
        [input] => {
            let dims = &input.shape[usize::from(batched)..];
            let values: Option<usize> = dims.iter().map(|&d| usize::try_from(d).ok()).product();
            let bounded = tables.contains_key(&input.name)
                || observed
                    .get(&input.name)
                    .is_some_and(|o| !o.numbers.is_empty());
            match values {
                None => Some("its row has dynamic dimensions"),
                Some(n) if n < SIMILARITY_MIN_VALUES => {
                    Some("its rows are too short to fingerprint")
                }
                Some(_) if !bounded => {
                    Some("FILL IN the input's range (or min/max) first, then enable it")
                }
                Some(_) => None,
            }
        }
        _ => Some("the model has several numeric inputs: name one with [defenses] input = \"...\""),
    };
    t.push_str("\n# Query similarity (docs/defenses.md): refuse a query that closely resembles an\n# earlier one from any key. Query-based attacks (HopSkipJump, Boundary) iterate\n# in small steps; exact repeats (a client retrying) are not matches. Defaults:\n# levels = 4, window = 8, top_k = 30, threshold = 25, capacity = 50000.\n");
    match why_not {
        None => t.push_str("[defenses.similarity]\naction = \"reject\"\n"),
        Some(reason) => {
            let _ = writeln!(
                t,
                "# Not enabled: {reason}.\n# [defenses.similarity]\n# action = \"reject\""
            );
        }
    }
}

/// Fewest values a row needs for query similarity to be on by default.
const SIMILARITY_MIN_VALUES: usize = 32;

fn input_table(
    t: &mut String,
    input: &GraphTensor,
    batched: bool,
    tables: &HashMap<String, u64>,
    seen: Option<&Observed>,
) {
    let d = datatype(input);
    t.push_str("\n[[inputs]]\n");
    let _ = writeln!(t, "name = {:?}", input.name);
    let _ = writeln!(t, "datatype = {:?}", d.as_str());
    let _ = writeln!(t, "shape = {}", dims(&input.shape));
    // Caps of the dynamic dimensions after the batch one.
    let start = usize::from(batched);
    let dynamic: Vec<usize> = (start..input.shape.len())
        .filter(|&i| input.shape[i] < 0)
        .collect();
    if !dynamic.is_empty() {
        let caps: Vec<String> = input
            .shape
            .iter()
            .enumerate()
            .map(|(i, &dim)| match dim {
                _ if i == 0 && batched => "64".into(),
                -1 => {
                    let observed = seen
                        .and_then(|s| s.max_dims.get(i - start).copied())
                        .filter(|&m| m > 0);
                    observed.map_or("512".into(), |m| m.next_power_of_two().to_string())
                }
                d => d.to_string(),
            })
            .collect();
        if seen.is_some() {
            t.push_str("# The largest size of each dimension (from the sample, rounded up to a power of two).\n");
        } else {
            t.push_str("# FILL IN: the largest size of each dynamic dimension you accept.\n");
        }
        let _ = writeln!(t, "max_shape = [{}]", caps.join(", "));
    }
    // A tabular input: [N, features] of floats.
    let tabular = d.is_float() && batched && input.shape.len() == 2 && input.shape[1] > 0;
    if tabular {
        let width = input.shape[1] as usize;
        let names: Vec<String> = match seen {
            Some(s) if s.columns.len() == width => s.columns.clone(),
            _ => (0..width).map(|i| format!("x{i}")).collect(),
        };
        if seen.is_none_or(|s| s.columns.len() != width) {
            t.push_str("# FILL IN: feature names (clients may send named features in v1).\n");
        }
        for (c, name) in names.iter().enumerate() {
            t.push_str("[[inputs.features]]\n");
            let _ = writeln!(t, "name = {name:?}");
            match seen.filter(|s| !s.numbers.is_empty()) {
                Some(s) => {
                    let column = s.numbers.iter().filter_map(move |r| r.get(c).copied());
                    let min = column.clone().fold(f64::INFINITY, f64::min);
                    let max = column.clone().fold(f64::NEG_INFINITY, f64::max);
                    let (mean, std) = mean_std(column);
                    let _ = writeln!(
                        t,
                        "min = {}\nmax = {}\nmean = {}\nstd = {}",
                        float(min),
                        float(max),
                        float(mean),
                        float(std)
                    );
                }
                None => {
                    t.push_str("# FILL IN: min and max seen in training (or range = [lo, hi]).\n")
                }
            }
        }
        return;
    }
    let numbers = seen.map(|s| s.numbers.iter().flatten().copied().collect::<Vec<f64>>());
    match d {
        DataType::Bytes => match seen {
            Some(s) if !s.strings.is_empty() => {
                let mut distinct: Vec<&str> = s.strings.iter().map(String::as_str).collect();
                distinct.sort_unstable();
                distinct.dedup();
                if distinct.len() <= 100 {
                    t.push_str("# The allowed strings (every one the sample holds).\n");
                    let _ = writeln!(t, "categories = {}", list(&distinct));
                } else {
                    let longest = s.strings.iter().map(String::len).max().unwrap_or(1);
                    t.push_str("# The longest string accepted, in bytes (twice the sample's longest).\n");
                    let _ = writeln!(t, "max_length = {}", (longest * 2).max(1));
                }
            }
            _ => t.push_str("# FILL IN: categories = [...] (allowed strings) or max_length = N (bytes; default 256).\n"),
        },
        DataType::Bool => {}
        d if d.is_integer() => {
            if let Some(&rows) = tables.get(&input.name) {
                t.push_str("# Ids: the graph looks this input up in a table of this many rows; valid\n# ids are 0 to ids - 1 (a negative id would read from the end of the table).\n");
                let _ = writeln!(t, "ids = {rows}");
            } else if let Some(v) = numbers.filter(|v| !v.is_empty()) {
                let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                t.push_str("# The values accepted (the sample's smallest and largest; widen as needed).\n");
                let _ = writeln!(t, "range = [{}, {}]", min as i64, max as i64);
            } else {
                t.push_str("# FILL IN: ids = N (an index into a table of N rows) or range = [lo, hi].\n");
            }
        }
        _ => match numbers.filter(|v| !v.is_empty()) {
            Some(v) => {
                let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let (mean, std) = mean_std(v.iter().copied());
                t.push_str("# Seen in the sample: values are accepted within [min, max] widened by the\n# range tolerance (or set range = [lo, hi] when the domain is known, e.g. pixels).\n");
                let _ = writeln!(
                    t,
                    "min = {}\nmax = {}\nmean = {}\nstd = {}",
                    float(min),
                    float(max),
                    float(mean),
                    float(std)
                );
            }
            None => t.push_str("# FILL IN: range = [lo, hi] (the values accepted), or min/max/mean/std from training.\n"),
        },
    }
    if input.shape.len() >= 3
        && d.is_numeric()
        && input.shape[input.shape.len() - 2..].iter().all(|&x| x > 0)
    {
        t.push_str(
            "# An image ([.., height, width])? Set image = true to allow feature squeezing.\n",
        );
    }
}

/// Reads a sample of inputs: CSV, .npy, .npz, or JSON lines of OIP requests.
fn read_sample(path: &Path, inputs: &[GraphTensor]) -> Result<HashMap<String, Observed>, Failure> {
    let bad = |m: String| Failure::usage(format!("{}: {m}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut out: HashMap<String, Observed> = HashMap::new();
    match ext.as_str() {
        "csv" => read_csv(&bytes, inputs, &mut out).map_err(bad)?,
        "npy" => {
            let [only] = inputs else {
                return Err(bad(
                    "a .npy sample fits a model with one input; use .npz (arrays named by input)"
                        .into(),
                ));
            };
            let array = npy(&bytes).map_err(bad)?;
            add_array(out.entry(only.name.clone()).or_default(), array);
        }
        "npz" => {
            let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
                .map_err(|e| bad(format!("not a .npz archive: {e}")))?;
            for i in 0..zip.len() {
                let mut file = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
                let name = file.name().trim_end_matches(".npy").to_owned();
                if !inputs.iter().any(|t| t.name == name) {
                    return Err(bad(format!("array {name:?} is not an input of the graph")));
                }
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut data).map_err(|e| bad(e.to_string()))?;
                let array = npy(&data).map_err(|e| bad(format!("{name}: {e}")))?;
                add_array(out.entry(name).or_default(), array);
            }
        }
        "jsonl" | "json" | "ndjson" => {
            let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                read_oip_line(line, &mut out).map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
            }
        }
        other => {
            return Err(bad(format!(
                "unknown sample kind {other:?}: use .csv, .npy, .npz or .jsonl (Open Inference Protocol requests)"
            )));
        }
    }
    if out.values().all(|o| o.rows == 0) {
        return Err(bad("the sample holds no rows".into()));
    }
    Ok(out)
}

/// A header row, then one row per line: the columns of a tabular input, or
/// one column per one-dimensional input, named by the header.
fn read_csv(
    bytes: &[u8],
    inputs: &[GraphTensor],
    out: &mut HashMap<String, Observed>,
) -> Result<(), String> {
    let mut reader = csv::Reader::from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(str::to_owned)
        .collect();
    let tabular = match inputs {
        [one] if one.shape.len() == 2 => Some(one),
        _ => None,
    };
    if let Some(input) = tabular {
        let width = usize::try_from(input.shape[1]).unwrap_or(header.len());
        if header.len() != width {
            return Err(format!(
                "{} columns; input {:?} takes {width}",
                header.len(),
                input.name
            ));
        }
        let seen = out.entry(input.name.clone()).or_default();
        seen.columns = header;
        for record in reader.records() {
            let record = record.map_err(|e| e.to_string())?;
            let row = record
                .iter()
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("{v:?} is not a number"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            seen.add_row(&[width], row);
        }
        return Ok(());
    }
    for name in &header {
        let Some(input) = inputs.iter().find(|i| &i.name == name) else {
            return Err(format!("column {name:?} is not an input of the graph"));
        };
        if input.shape.len() > 2 {
            return Err(format!(
                "input {name:?} has more than one value per row; use .npz or .jsonl"
            ));
        }
    }
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        for (name, value) in header.iter().zip(record.iter()) {
            let seen = out.entry(name.clone()).or_default();
            match value.trim().parse::<f64>() {
                Ok(v) => seen.add_row(&[], vec![v]),
                Err(_) => {
                    seen.strings.push(value.to_owned());
                    seen.rows += 1;
                }
            }
        }
    }
    Ok(())
}

/// One OIP request per line: `{"inputs": [{"name", "shape", "data"}, ...]}`.
fn read_oip_line(line: &str, out: &mut HashMap<String, Observed>) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Request {
        inputs: Vec<Input>,
    }
    #[derive(serde::Deserialize)]
    struct Input {
        name: String,
        shape: Vec<usize>,
        data: serde_json::Value,
    }
    let request: Request = serde_json::from_str(line).map_err(|e| e.to_string())?;
    for input in request.inputs {
        let mut flat = Vec::new();
        flatten(&input.data, &mut flat);
        let rows = input.shape.first().copied().unwrap_or(1).max(1);
        let per_row = flat.len() / rows;
        let seen = out.entry(input.name).or_default();
        for row in flat.chunks(per_row.max(1)) {
            if row.iter().all(|v| v.is_number()) {
                seen.add_row(
                    input.shape.get(1..).unwrap_or_default(),
                    row.iter().filter_map(|v| v.as_f64()).collect(),
                );
            } else {
                seen.strings
                    .extend(row.iter().filter_map(|v| v.as_str().map(str::to_owned)));
                seen.rows += 1;
            }
        }
    }
    Ok(())
}

fn flatten<'v>(v: &'v serde_json::Value, out: &mut Vec<&'v serde_json::Value>) {
    match v {
        serde_json::Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

/// A NumPy array: its shape and its values as numbers.
struct Array {
    shape: Vec<usize>,
    values: Vec<f64>,
}

fn add_array(seen: &mut Observed, array: Array) {
    let rows = array.shape.first().copied().unwrap_or(1).max(1);
    let per_row = array.values.len() / rows;
    for row in array.values.chunks(per_row.max(1)) {
        seen.add_row(array.shape.get(1..).unwrap_or_default(), row.to_vec());
    }
}

/// Parses the `.npy` format (version 1-3, C order, little-endian numbers
/// and booleans). Written out: the format is a short header and raw data,
/// and the crates that read it pull in ndarray.
fn npy(bytes: &[u8]) -> Result<Array, String> {
    let rest = bytes.strip_prefix(b"\x93NUMPY").ok_or("not a .npy file")?;
    let (&major, rest) = rest.split_first().ok_or("cut short")?;
    let rest = rest.get(1..).ok_or("cut short")?;
    let (len, rest) = match major {
        1 => {
            let (l, r) = rest.split_first_chunk::<2>().ok_or("cut short")?;
            (usize::from(u16::from_le_bytes(*l)), r)
        }
        2 | 3 => {
            let (l, r) = rest.split_first_chunk::<4>().ok_or("cut short")?;
            (u32::from_le_bytes(*l) as usize, r)
        }
        v => return Err(format!("unknown .npy version {v}")),
    };
    let header =
        std::str::from_utf8(rest.get(..len).ok_or("cut short")?).map_err(|_| "bad header")?;
    let data = &rest[len..];
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))?;
        Some(
            header[at + key.len() + 2..]
                .trim_start()
                .trim_start_matches(':')
                .trim_start(),
        )
    };
    if field("fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-order arrays are not read; save with np.ascontiguousarray".into());
    }
    let descr = field("descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split('\'').next())
        .ok_or("no descr in the header")?;
    let shape_text = field("shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or("no shape in the header")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape {shape_text:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    fn read<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        data.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    let values = match descr {
        "<f4" => read(data, |b| f64::from(f32::from_le_bytes(b))),
        "<f8" => read(data, f64::from_le_bytes),
        "<f2" => read(data, |b| {
            f64::from(warden_tensor::f16_to_f32(u16::from_le_bytes(b)))
        }),
        "<i8" => read(data, |b| i64::from_le_bytes(b) as f64),
        "<i4" => read(data, |b| f64::from(i32::from_le_bytes(b))),
        "<i2" => read(data, |b| f64::from(i16::from_le_bytes(b))),
        "|i1" => read(data, |b: [u8; 1]| f64::from(b[0] as i8)),
        "|u1" | "|b1" => read(data, |b: [u8; 1]| f64::from(b[0])),
        "<u2" => read(data, |b| f64::from(u16::from_le_bytes(b))),
        "<u4" => read(data, |b| f64::from(u32::from_le_bytes(b))),
        "<u8" => read(data, |b| u64::from_le_bytes(b) as f64),
        other => {
            return Err(format!(
                "dtype {other:?} is not read (numbers and booleans only)"
            ));
        }
    };
    if values.len() != shape.iter().product::<usize>() {
        return Err("the data does not fill the shape".into());
    }
    Ok(Array { shape, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, d: DataType, shape: &[i64]) -> GraphTensor {
        GraphTensor {
            name: name.into(),
            datatype: Ok(d),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn npy_arrays_are_read() {
        // np.save of np.array([[1, 2], [3, 4]], dtype=np.float32)
        let mut file = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
        let padded = format!("{header:<117}\n");
        file.extend((padded.len() as u16).to_le_bytes());
        file.extend(padded.as_bytes());
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            file.extend(v.to_le_bytes());
        }
        let a = npy(&file).unwrap();
        assert_eq!(a.shape, [2, 2]);
        assert_eq!(a.values, [1.0, 2.0, 3.0, 4.0]);
        assert!(npy(&file[..20]).is_err());
        assert!(npy(b"nonsense").is_err());
    }

    #[test]
    fn the_task_is_guessed_from_the_outputs() {
        let classifier = [
            tensor("label", DataType::I64, &[-1]),
            tensor("probabilities", DataType::F32, &[-1, 3]),
        ];
        assert!(matches!(
            guess(&classifier),
            Guess::Classification {
                classes: Some(3),
                ..
            }
        ));
        assert!(matches!(
            guess(&[tensor("variable", DataType::F32, &[-1, 1])]),
            Guess::Regression { output: 0 }
        ));
        assert!(matches!(
            guess(&[
                tensor("embedding", DataType::F32, &[-1, 64]),
                tensor("norm", DataType::F32, &[-1])
            ]),
            Guess::Tensor
        ));
    }

    #[test]
    fn a_written_card_parses_and_keeps_secure_defaults() {
        let inputs = [
            tensor("ids", DataType::I64, &[-1, -1]),
            tensor("mask", DataType::I64, &[-1, -1]),
        ];
        let outputs = [
            tensor("label", DataType::I64, &[-1]),
            tensor("probabilities", DataType::F32, &[-1, 2]),
            tensor("logits", DataType::F32, &[-1, 2]),
        ];
        let tables = HashMap::from([("ids".to_owned(), 500u64)]);
        let text = card_text(
            "m",
            "1/model.onnx",
            &inputs,
            &outputs,
            &tables,
            &HashMap::new(),
            None,
        );
        let card = warden_models::ModelCard::parse(
            &text,
            warden_models::card::CardDefaults {
                max_batch: 64,
                range_tolerance: 0.25,
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(card.inputs[0].valid, warden_models::card::Valid::Ids(500));
        assert_eq!(card.inputs[0].max_shape, [64, 512]);
        assert!(
            !card.policy.probabilities && card.policy.outputs == 0,
            "label only"
        );
        let admin = card.policy_for(["admin"]);
        assert!(
            admin.probabilities && admin.shows(2),
            "admin sees every output"
        );
        assert_eq!(card.outputs.len(), 3);
        // A budget for every role but admin; no similarity on two id inputs.
        assert_eq!(card.budget.and_then(|b| b.per_day), Some(10_000));
        assert!(card.defenses.similarity.is_none());
        assert!(text.contains("several numeric inputs"), "{text}");
    }

    /// An image input of fixed size with a sample's bounds gets query
    /// similarity at `reject`; without bounds, the section is written
    /// commented out, saying what to fill in.
    #[test]
    fn query_similarity_is_on_where_it_applies() {
        let inputs = [tensor("image", DataType::F32, &[-1, 1, 8, 8])];
        let outputs = [tensor("score", DataType::F32, &[-1, 1])];
        let defaults = warden_models::card::CardDefaults {
            max_batch: 64,
            range_tolerance: 0.25,
        };
        let text = card_text(
            "m",
            "1/model.onnx",
            &inputs,
            &outputs,
            &HashMap::new(),
            &HashMap::new(),
            None,
        );
        assert!(text.contains("FILL IN the input's range"), "{text}");
        let mut seen = Observed::default();
        seen.add_row(&[1, 8, 8], (0..64).map(f64::from).collect());
        let observed = HashMap::from([("image".to_owned(), seen)]);
        let text = card_text(
            "m",
            "1/model.onnx",
            &inputs,
            &outputs,
            &HashMap::new(),
            &observed,
            None,
        );
        let card = warden_models::ModelCard::parse(&text, defaults)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let s = card.defenses.similarity.expect("similarity on");
        assert_eq!(
            (s.action, s.window, s.top_k),
            (warden_models::defenses::Action::Reject, 8, 30)
        );
    }
}
