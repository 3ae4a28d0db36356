//! Self-contained HTML pages for a timeline and a report: inline styles, the timeline drawn as an SVG
//! picture (one lane per category, a mark per entry, its details on hover), no script and no external
//! asset, so the file can be attached to a ticket and opened anywhere. Every value is escaped.

use std::fmt::Write as _;

use crate::incident::report::{Reach, Report};
use crate::incident::timeline::{Category, Timeline, details, line};
use crate::rfc3339;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;color:#1d2330;padding:0 1em}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #d6dae3}\
table{border-collapse:collapse;width:100%;margin:.6em 0}td,th{border:1px solid #d6dae3;padding:.25em .45em;text-align:left;vertical-align:top}\
th{background:#f1f3f7}pre{background:#f6f7f9;padding:.7em;overflow-x:auto}code,pre{font:12px/1.4 ui-monospace,monospace}\
.bad{color:#a11d21;font-weight:600}svg text{font:11px system-ui,sans-serif;fill:#4a5263}";

fn colour(c: Category) -> &'static str {
    match c {
        Category::Login => "#2f6fdf",
        Category::Token => "#2a9d8f",
        Category::Use => "#6c757d",
        Category::Rejection => "#d1495b",
        Category::Detection => "#e76f51",
        Category::Response => "#8e44ad",
        Category::Admin => "#1d2330",
        Category::Other => "#adb5bd",
    }
}

/// The timeline as an SVG picture: time runs left to right, one lane per category that has entries.
pub fn timeline_svg(t: &Timeline) -> String {
    let lanes: Vec<Category> =
        Category::ALL.into_iter().filter(|c| t.entries.iter().any(|e| e.category == *c)).collect();
    let (left, width, lane_h) = (90.0_f64, 880.0_f64, 28.0_f64);
    let height = lane_h * lanes.len().max(1) as f64 + 40.0;
    let start = t.entries.iter().map(|e| e.at).min().unwrap_or(0);
    let end = t.entries.iter().map(|e| e.last_at).max().unwrap_or(start).max(start + 1);
    let x = |at: i64| left + (at - start) as f64 / (end - start) as f64 * width;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {height}\" width=\"100%\" role=\"img\" \
         aria-label=\"timeline\">",
        left + width + 20.0
    );
    for (i, lane) in lanes.iter().enumerate() {
        let y = 20.0 + lane_h * i as f64;
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{}\">{}</text><line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#e3e6ec\"/>",
            y + 4.0,
            lane.name(),
            y,
            left + width,
            y
        );
    }
    for e in &t.entries {
        let Some(lane) = lanes.iter().position(|c| *c == e.category) else { continue };
        let y = 20.0 + lane_h * lane as f64;
        let (x0, x1) = (x(e.at), x(e.last_at));
        let tip = esc(&line(e));
        let fill = colour(e.category);
        if x1 - x0 > 2.0 {
            let _ = write!(
                svg,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"10\" rx=\"3\" fill=\"{fill}\" \
                 opacity=\"0.75\"><title>{tip}</title></rect>",
                y - 5.0,
                x1 - x0
            );
        } else {
            let r = if e.count > 1 { 6.0 } else { 4.5 };
            let _ = write!(
                svg,
                "<circle cx=\"{x0:.1}\" cy=\"{y:.1}\" r=\"{r}\" fill=\"{fill}\"><title>{tip}</title></circle>"
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text></svg>",
        height - 6.0,
        rfc3339(start),
        left + width,
        height - 6.0,
        rfc3339(end)
    );
    svg
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{STYLE}</style></head>\
         <body>{body}</body></html>\n",
        esc(title)
    )
}

fn entries_table(t: &Timeline) -> String {
    let mut out =
        String::from("<table><tr><th>Time</th><th>Category</th><th>Event</th><th>Details</th></tr>");
    for e in &t.entries {
        let kind = if e.count > 1 { format!("{} ×{}", e.kind, e.count) } else { e.kind.clone() };
        let details = details(e);
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            rfc3339(e.at),
            e.category.name(),
            esc(&kind),
            esc(&details)
        );
    }
    out.push_str("</table>");
    out
}

/// A timeline page: the picture, then every entry.
pub fn timeline(t: &Timeline) -> String {
    let title = format!("Timeline of {}", t.title);
    let mut body = format!(
        "<h1>{}</h1><p>{} events{}</p>",
        esc(&title),
        t.events,
        if t.truncated { " (older events left out)" } else { "" }
    );
    body.push_str(&timeline_svg(t));
    body.push_str(&entries_table(t));
    page(&title, &body)
}

fn reach_table(rows: &[Reach]) -> String {
    if rows.is_empty() {
        return "<p>None.</p>".into();
    }
    let mut out = String::from(
        "<table><tr><th>Service</th><th>Audience</th><th>Route</th><th>Requests</th><th>Sources</th><th>First</th>\
         <th>Last</th><th>After containment</th></tr>",
    );
    for r in rows {
        let route = match &r.reason {
            Some(why) => format!("{} ({why})", r.route),
            None => r.route.clone(),
        };
        let after = if r.after_containment > 0 {
            format!("<span class=\"bad\">{}</span>", r.after_containment)
        } else {
            "0".into()
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{after}</td></tr>",
            esc(&r.service),
            esc(&r.audience),
            esc(&route),
            r.requests,
            esc(&r.sources.iter().cloned().collect::<Vec<_>>().join(", ")),
            rfc3339(r.first_at),
            rfc3339(r.last_at)
        );
    }
    out.push_str("</table>");
    out
}

/// A report page: the same sections as the Markdown, with the timeline drawn.
pub fn report(r: &Report) -> String {
    let i = &r.incident;
    let title = format!("Incident {}: {}", i.id, i.subject);
    let mut b = format!(
        "<h1>{}</h1><p>State: <b>{}</b>. Opened {} by {}.</p><h2>Summary</h2><p>{}</p><h2>Scope</h2><p>Sessions \
         involved: {}.</p>",
        esc(&title),
        esc(&i.state),
        rfc3339(i.opened_at),
        esc(&i.opened_by),
        esc(&r.summary()),
        esc(&if r.sessions.is_empty() { "none on record".to_owned() } else { r.sessions.join(", ") })
    );
    for (heading, rows) in [
        ("Reached by the copy (from outside the session's network)", &r.reached_by_copy),
        ("Reached from the session's own network", &r.reached_by_owner),
        ("Refused", &r.refused),
    ] {
        let _ = write!(b, "<h3>{}</h3>{}", esc(heading), reach_table(rows));
    }
    b.push_str("<h2>Timeline</h2>");
    b.push_str(&timeline_svg(&r.timeline));
    b.push_str("<h2>Root cause</h2><ul>");
    for hint in r.hints() {
        let _ = write!(b, "<li>{}</li>", esc(&hint));
    }
    b.push_str("</ul>");
    for l in &r.lineages {
        let _ = write!(
            b,
            "<p>Lineage of session <code>{}</code>:</p><pre>{}</pre>",
            esc(&l.family),
            esc(&l.text())
        );
    }
    b.push_str("<h2>Actions taken</h2><table><tr><th>Time</th><th>Who</th><th>Action</th><th>Target</th><th>Result</th></tr>");
    for a in &r.actions {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            rfc3339(a.at),
            esc(&a.actor),
            esc(&a.action),
            esc(&a.target),
            esc(&a.outcome)
        );
    }
    b.push_str("</table><h2>What remains</h2><ul>");
    for step in &r.remaining {
        let _ = write!(b, "<li>{}</li>", esc(step));
    }
    b.push_str("</ul><h2>Events</h2>");
    b.push_str(&entries_table(&r.timeline));
    page(&title, &b)
}
