//! The HTML report of `simulator run --html FILE`: one self-contained page
//! (no script, no outside file) with the summary, the flow between the
//! cities as a shaded matrix, a chart of tickets and transfers over time
//! with the faults marked on it, and every invariant violation with its
//! history.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::run::RunReport;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn page(r: &RunReport) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>simulator run: {}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}\
         .bad{{color:#b00020}}.ok{{color:#1b7f3b}}pre{{background:#f8f8f8;padding:8px}}</style>\
         <h1>simulator run: {}</h1><p>{}</p>",
        esc(&r.scenario),
        esc(&r.scenario),
        esc(&r.description)
    );
    let verdict = if r.invariant_violations.is_empty() {
        "<span class=\"ok\">every invariant held</span>".to_owned()
    } else {
        format!(
            "<span class=\"bad\">{} invariant violations</span>",
            r.invariant_violations.len()
        )
    };
    let _ = write!(
        h,
        "<p>mode {} · seed {} · workload digest <code>{}</code> · {:.0} simulated minutes at speed {} · {:.1} s · {verdict}</p>",
        esc(&r.mode),
        r.seed,
        esc(&r.plan.digest),
        r.simulated_minutes,
        r.speed,
        r.duration_secs
    );
    let t = &r.figures.tickets;
    let _ = write!(
        h,
        "<h2>Tickets and transfers</h2><table><tr><th>created</th><th>cross-city</th><th>multi-city</th>\
         <th>dispatched</th><th>delivered</th><th>resolved</th><th>rejected</th><th>reassigned</th>\
         <th>lost</th><th>duplicated</th><th>transfers</th><th>completed</th><th>stuck</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        t.created,
        t.cross_city,
        t.multi_city,
        t.dispatched,
        t.delivered,
        t.resolved,
        t.rejected,
        t.reassigned,
        t.lost,
        t.duplicated,
        r.figures.transfers.started,
        r.figures.transfers.completed,
        r.figures.transfers.stuck
    );
    h.push_str("<h2>Per city</h2><table><tr><th>city</th><th>sent</th><th>received</th><th>local</th><th>calls out</th><th>calls in</th><th>accepted</th><th>resolved</th><th>reopened</th></tr>");
    for (city, f) in &r.figures.cities {
        let _ = write!(
            h,
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(city),
            f.sent,
            f.received,
            f.local,
            f.transfers_out,
            f.transfers_in,
            f.handled.accepted,
            f.handled.resolved,
            f.handled.reopened
        );
    }
    h.push_str("</table>");
    flow_matrix(&mut h, r);
    over_time(&mut h, r);
    if !r.faults.is_empty() {
        h.push_str("<h2>Faults</h2><table><tr><th>at (s)</th><th>kind</th><th>target</th><th>for (s)</th><th>outcome</th></tr>");
        for f in &r.faults {
            let _ = write!(
                h,
                "<tr><td>{:.1}</td><td>{:?}</td><td>{}</td><td>{:.1}</td><td>{}</td></tr>",
                f.at_secs,
                f.kind,
                esc(&f.target),
                f.for_secs,
                esc(&f.outcome)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Invariant violations</h2>");
    if r.invariant_violations.is_empty() {
        h.push_str("<p class=\"ok\">None.</p>");
    }
    for v in &r.invariant_violations {
        let _ = write!(
            h,
            "<h3 class=\"bad\">{} · {} ({})</h3><p>{}</p><pre>{}</pre>",
            esc(&v.invariant),
            esc(&v.subject),
            esc(&v.found),
            esc(&v.detail),
            esc(&v.history.join("\n"))
        );
    }
    h.push_str("</html>\n");
    h
}

/// Origin × target, tickets and transfers, shaded by volume.
fn flow_matrix(h: &mut String, r: &RunReport) {
    let cities: Vec<&String> = r.figures.cities.keys().collect();
    let cells: BTreeMap<(&str, &str), (u64, u64)> = r
        .flow
        .iter()
        .map(|c| {
            (
                (c.origin.as_str(), c.target.as_str()),
                (c.tickets, c.transfers),
            )
        })
        .collect();
    let max = cells.values().map(|(t, x)| t + x).max().unwrap_or(1).max(1);
    h.push_str("<h2>Flow between cities</h2><p>Rows send, columns receive: tickets / transfers.</p><table><tr><th>from \\ to</th>");
    for c in &cities {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>");
    for from in &cities {
        let _ = write!(h, "<tr><th>{}</th>", esc(from));
        for to in &cities {
            let (t, x) = cells
                .get(&(from.as_str(), to.as_str()))
                .copied()
                .unwrap_or_default();
            let shade = 255 - ((t + x) * 160 / max) as u8;
            let _ = write!(
                h,
                "<td style=\"background:rgb({shade},{shade},255)\">{t} / {x}</td>"
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// Tickets and transfers per second over the run, faults shaded.
fn over_time(h: &mut String, r: &RunReport) {
    let (w, ht, pad) = (800.0, 220.0, 30.0);
    let Some(last) = r.timeline.last() else {
        return;
    };
    let span = last.secs.max(1.0);
    let rates = |f: fn(&crate::run::Sample) -> u64| -> Vec<(f64, f64)> {
        r.timeline
            .windows(2)
            .map(|p| {
                let dt = (p[1].secs - p[0].secs).max(1e-3);
                (p[1].secs, (f(&p[1]).saturating_sub(f(&p[0]))) as f64 / dt)
            })
            .collect()
    };
    let tickets = rates(|s| s.tickets);
    let transfers = rates(|s| s.transfers);
    let top = tickets
        .iter()
        .chain(&transfers)
        .map(|(_, v)| *v)
        .fold(1.0, f64::max);
    let x = |s: f64| pad + s / span * (w - 2.0 * pad);
    let y = |v: f64| ht - pad - v / top * (ht - 2.0 * pad);
    let line = |pts: &[(f64, f64)]| -> String {
        pts.iter()
            .map(|(s, v)| format!("{:.1},{:.1}", x(*s), y(*v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        h,
        "<h2>Over time</h2><p>Per real second: <span style=\"color:#1565c0\">tickets created</span>, \
         <span style=\"color:#ef6c00\">transfers started</span>; faults shaded.</p>\
         <svg width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" role=\"img\">"
    );
    for f in &r.faults {
        let _ = write!(
            h,
            "<rect x=\"{:.1}\" y=\"{pad}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#fdd\"><title>{:?} {}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{:?} {}</text>",
            x(f.at_secs),
            (x(f.at_secs + f.for_secs) - x(f.at_secs)).max(1.0),
            ht - 2.0 * pad,
            f.kind,
            esc(&f.target),
            x(f.at_secs),
            pad - 4.0,
            f.kind,
            esc(&f.target)
        );
    }
    let _ = write!(
        h,
        "<line x1=\"{pad}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>\
         <polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#ef6c00\" stroke-width=\"1.5\" points=\"{}\"/>\
         <text x=\"2\" y=\"{:.1}\" font-size=\"10\">{top:.0}/s</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{span:.0} s</text></svg>",
        ht - pad,
        w - pad,
        ht - pad,
        line(&tickets),
        line(&transfers),
        pad,
        w - pad - 20.0,
        ht - 8.0
    );
}
