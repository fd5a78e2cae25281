//! Writes benchmark figures into docs/BENCHMARKS.md, between markers, so
//! the page always shows the last measured run next to how it was measured.

use std::fs;

use anyhow::{Context as _, bail};

const PATH: &str = "docs/BENCHMARKS.md";

pub fn write_section(name: &str, body: &str) -> anyhow::Result<()> {
    write_section_from(name, &format!("cargo xtask bench {name}"), body)
}

/// As [`write_section`], naming the command that measured the figures.
pub fn write_section_from(name: &str, command: &str, body: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let page = fs::read_to_string(PATH).with_context(|| format!("reading {PATH}"))?;
    let (Some(start), Some(stop)) = (page.find(&begin), page.find(&end)) else {
        bail!("{PATH} has no `{begin}` … `{end}` section");
    };
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let updated = format!(
        "{}{begin}\nLast run: {date}, `{command}`.\n\n{body}{}",
        &page[..start],
        &page[stop..]
    );
    fs::write(PATH, updated).with_context(|| format!("writing {PATH}"))?;
    println!("bench: wrote the {name} figures to {PATH}");
    Ok(())
}
