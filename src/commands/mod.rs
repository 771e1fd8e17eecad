//! One module per command; each parses its own flags and calls into a component crate.

pub mod collect;
pub mod demo;
pub mod gen_flows;
pub mod policy;
pub mod topics;

/// A progress bar on stderr for `total` items (hidden when stderr is not a terminal).
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {human_pos}/{human_len} ({per_sec}, {eta})",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}
