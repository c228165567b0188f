//! Defenses against ML attacks (SPEC §2, between validation and inference):
//! out-of-distribution inputs, adversarial inputs (feature squeezing) and
//! model extraction (PRADA). Each is configured per model card with an
//! action — `flag`, `throttle` or `reject` — and shows in metrics and in
//! the audit record's `defense_flags`. docs/defenses.md has the measurements.

pub mod shapiro;
