//! The report: one `Row` per figure, the table (or JSON) they print as, and
//! the medians and percentiles behind them.

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) metric: String,
    pub(crate) value: f64,
    pub(crate) unit: String,
    pub(crate) floor: Option<f64>,
    pub(crate) ratio: Option<f64>,
    pub(crate) target: String,
    pub(crate) pass: Option<bool>,
    pub(crate) note: String,
}

pub(crate) fn print_table(rows: &[Row]) {
    println!(
        "{:<15} {:<38} {:>12} {:>12} {:>7}  {:<22} {:<5} NOTE",
        "SCENARIO", "METRIC", "VALUE", "FLOOR", "RATIO", "TARGET", "PASS"
    );
    for r in rows {
        let f = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else if v >= 1000.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        println!(
            "{:<15} {:<38} {:>12} {:>12} {:>7}  {:<22} {:<5} {}",
            r.scenario,
            r.metric,
            format!("{} {}", f(r.value), r.unit),
            r.floor
                .map(|x| format!("{} {}", f(x), r.unit))
                .unwrap_or("-".into()),
            r.ratio.map(|x| format!("{x:.2}×")).unwrap_or("-".into()),
            r.target,
            match r.pass {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            },
            r.note
        );
    }
}

pub(crate) fn row(scenario: &str, metric: &str, value: f64, unit: &str) -> Row {
    Row {
        scenario: scenario.into(),
        metric: metric.into(),
        value,
        unit: unit.into(),
        floor: None,
        ratio: None,
        target: String::new(),
        pass: None,
        note: String::new(),
    }
}

impl Row {
    pub(crate) fn floor(mut self, floor: f64) -> Self {
        self.floor = Some(floor);
        self.ratio = Some(self.value / floor);
        self
    }
    pub(crate) fn target(mut self, target: &str, pass: bool) -> Self {
        self.target = target.into();
        self.pass = Some(pass);
        self
    }
    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
