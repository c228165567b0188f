//! What Warden reads from an ONNX file beyond what ONNX Runtime reports:
//! the size of each lookup table a graph input indexes directly.
//!
//! ONNX `Gather` reads a negative index from the end of its table, and one
//! past the end is a runtime error, so an id input must be bounded to
//! `[0, rows)` before inference. Where the card declares no `ids` or
//! `range` for an integer input, the table size read here bounds it
//! (docs/models.md, "Ids").
//!
//! ONNX Runtime does not expose a graph's nodes or initializers, and the
//! `onnx` protobuf crates bring a code generator and the whole schema for
//! the four fields needed here, so this is a small protobuf reader written
//! by hand: it walks `ModelProto.graph` → `GraphProto.node` (op type,
//! inputs, the `axis` attribute) and `GraphProto.initializer` (name, dims),
//! and ignores everything else. Anything malformed yields no bound, never
//! a panic.

use std::collections::HashMap;

/// One protobuf field: its number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one protobuf message, in order; stops at the first
/// malformed field.
struct Fields<'a> {
    rest: &'a [u8],
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = buf.split_first()?;
        *buf = tail;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u64, Field<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let key = varint(&mut self.rest)?;
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(varint(&mut self.rest)?),
            1 => {
                self.rest = self.rest.get(8..)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut self.rest)?).ok()?;
                if len > self.rest.len() {
                    self.rest = &[];
                    return None;
                }
                let (value, tail) = self.rest.split_at(len);
                self.rest = tail;
                Field::Bytes(value)
            }
            5 => {
                self.rest = self.rest.get(4..)?;
                Field::Fixed
            }
            _ => {
                self.rest = &[];
                return None;
            }
        };
        Some((number, field))
    }
}

fn fields(bytes: &[u8]) -> Fields<'_> {
    Fields { rest: bytes }
}

/// A node of the default domain: its operator, inputs, outputs and `axis`.
struct Node {
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    axis: i64,
}

/// Operators whose first output holds the same integers as their first
/// input (re-typed or re-shaped): an id input often passes through one of
/// them on its way to a `Gather`.
const PASS_THROUGH: [&str; 6] = [
    "Cast",
    "Identity",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
];

/// For each graph input that is the indices of a `Gather` over an
/// initializer (a lookup table), directly or through the re-typing and
/// re-shaping operators of [`PASS_THROUGH`], the number of entries along
/// the gathered axis — the smallest, if it indexes several tables.
pub fn lookup_tables(onnx: &[u8]) -> HashMap<String, u64> {
    let Some(graph) = fields(onnx).find_map(|(n, f)| match (n, f) {
        (7, Field::Bytes(b)) => Some(b),
        _ => None,
    }) else {
        return HashMap::new();
    };
    let mut nodes = Vec::new();
    let mut tables: HashMap<String, Vec<i64>> = HashMap::new();
    let mut inputs = Vec::new();
    for (n, f) in fields(graph) {
        match (n, f) {
            (1, Field::Bytes(node)) => nodes.extend(parse_node(node)),
            (5, Field::Bytes(tensor)) => {
                let (name, dims) = initializer(tensor);
                tables.insert(name, dims);
            }
            (11, Field::Bytes(value_info)) => {
                if let Some(name) = fields(value_info).find_map(|(n, f)| match (n, f) {
                    (1, Field::Bytes(s)) => std::str::from_utf8(s).ok().map(str::to_owned),
                    _ => None,
                }) {
                    inputs.push(name);
                }
            }
            _ => {}
        }
    }
    // Each pass-through node's output, traced back to where its integers
    // come from.
    let source: HashMap<&str, &str> = nodes
        .iter()
        .filter(|n| PASS_THROUGH.contains(&n.op.as_str()))
        .filter_map(|n| Some((n.outputs.first()?.as_str(), n.inputs.first()?.as_str())))
        .collect();
    fn origin<'a>(source: &HashMap<&'a str, &'a str>, mut name: &'a str) -> &'a str {
        // Bounded: a malformed graph could loop.
        for _ in 0..64 {
            match source.get(name) {
                Some(up) => name = up,
                None => break,
            }
        }
        name
    }
    let mut bounds: HashMap<String, u64> = HashMap::new();
    for g in nodes
        .iter()
        .filter(|n| n.op == "Gather" && n.inputs.len() == 2)
    {
        let indices = origin(&source, &g.inputs[1]);
        if !inputs.iter().any(|i| i == indices) {
            continue;
        }
        let Some(dims) = tables.get(&g.inputs[0]) else {
            continue;
        };
        let axis = if g.axis < 0 {
            g.axis + dims.len() as i64
        } else {
            g.axis
        };
        let Some(&rows) = usize::try_from(axis).ok().and_then(|a| dims.get(a)) else {
            continue;
        };
        let Ok(rows) = u64::try_from(rows) else {
            continue;
        };
        bounds
            .entry(indices.to_owned())
            .and_modify(|b| *b = (*b).min(rows))
            .or_insert(rows);
    }
    bounds
}

fn parse_node(node: &[u8]) -> Option<Node> {
    let mut op = None;
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let mut axis = 0;
    let mut domain_default = true;
    for (n, f) in fields(node) {
        match (n, f) {
            (1, Field::Bytes(s)) => inputs.push(std::str::from_utf8(s).ok()?.to_owned()),
            (2, Field::Bytes(s)) => outputs.push(std::str::from_utf8(s).ok()?.to_owned()),
            (4, Field::Bytes(s)) => op = Some(std::str::from_utf8(s).ok()?.to_owned()),
            (7, Field::Bytes(s)) => domain_default = s.is_empty() || s == b"ai.onnx",
            (5, Field::Bytes(attribute)) => {
                let mut name = None;
                let mut value = None;
                for (an, af) in fields(attribute) {
                    match (an, af) {
                        (1, Field::Bytes(s)) => name = Some(s),
                        // int64 `i`, as a varint (two's complement).
                        (3, Field::Varint(v)) => value = Some(v as i64),
                        _ => {}
                    }
                }
                if name == Some(b"axis".as_slice()) {
                    axis = value.unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    if !domain_default {
        return None;
    }
    Some(Node {
        op: op?,
        inputs,
        outputs,
        axis,
    })
}

fn initializer(tensor: &[u8]) -> (String, Vec<i64>) {
    let mut name = String::new();
    let mut dims = Vec::new();
    for (n, f) in fields(tensor) {
        match (n, f) {
            (1, Field::Varint(d)) => dims.push(d as i64),
            // Packed dims.
            (1, Field::Bytes(mut packed)) => {
                while !packed.is_empty() {
                    match varint(&mut packed) {
                        Some(d) => dims.push(d as i64),
                        None => break,
                    }
                }
            }
            (8, Field::Bytes(s)) => name = String::from_utf8_lossy(s).into_owned(),
            _ => {}
        }
    }
    (name, dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn graph(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models")
            .join(name)
            .join("1/model.onnx");
        std::fs::read(path).unwrap()
    }

    #[test]
    fn the_demo_lookup_tables_are_found() {
        let recommender = lookup_tables(&graph("recommender"));
        assert_eq!(recommender.get("user_id"), Some(&100));
        assert_eq!(recommender.get("item_id"), Some(&200));
        let sentiment = lookup_tables(&graph("sentiment"));
        assert_eq!(sentiment.get("input_ids"), Some(&500));
        assert!(!sentiment.contains_key("attention_mask"));
        assert!(lookup_tables(&graph("iris")).is_empty());
    }

    /// A protobuf length-delimited field.
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![number << 3 | 2];
        let mut len = bytes.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(bytes);
        out
    }

    fn node(op: &str, inputs: &[&str], output: &str) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            n.extend(field(1, i.as_bytes()));
        }
        n.extend(field(2, output.as_bytes()));
        n.extend(field(4, op.as_bytes()));
        field(1, &n)
    }

    #[test]
    fn ids_are_traced_through_casts_and_reshapes() {
        // ids → Cast → Unsqueeze → Gather(table[37, 4]); other → Gather direct.
        let mut g = Vec::new();
        g.extend(node("Cast", &["ids"], "ids32"));
        g.extend(node("Unsqueeze", &["ids32", "axes"], "ids2"));
        g.extend(node("Gather", &["table", "ids2"], "emb"));
        g.extend(node("Gather", &["table", "other"], "emb2"));
        // A loop of pass-through nodes must not hang the reader.
        g.extend(node("Identity", &["a"], "b"));
        g.extend(node("Identity", &["b"], "a"));
        g.extend(node("Gather", &["table", "a"], "emb3"));
        // The table: dims [37, 4] (packed), name "table".
        let mut t = vec![1 << 3, 37, 1 << 3, 4];
        t.extend(field(8, b"table"));
        g.extend(field(5, &t));
        for input in ["ids", "other"] {
            g.extend(field(11, &field(1, input.as_bytes())));
        }
        let bounds = lookup_tables(&field(7, &g));
        assert_eq!(bounds.get("ids"), Some(&37));
        assert_eq!(bounds.get("other"), Some(&37));
        assert_eq!(bounds.len(), 2);
    }

    #[test]
    fn malformed_files_give_no_bounds() {
        let g = graph("recommender");
        for cut in [0, 1, 7, g.len() / 2, g.len() - 1] {
            let _ = lookup_tables(&g[..cut]);
        }
        assert!(lookup_tables(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").is_empty());
    }
}
