//! The one template engine of tether (issue 17): Jinja syntax through
//! `minijinja`, strict about undefined variables so that a typo in a
//! config template is an error naming the file, never an empty string in a
//! device's config. tetherd compiles templates when a spec is written
//! ([`check`]); the agent renders them on the device ([`render`]).

use serde::Serialize;

/// Longest template source, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 32 * 1024;
/// Longest rendered output, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Instructions one render may run: ends loops that would run for minutes.
const FUEL: u64 = 1_000_000;

/// Why a template cannot be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("is {bytes} bytes, more than the {MAX_TEMPLATE_BYTES} allowed")]
    TooLarge { bytes: usize },
    #[error("is not a valid template: {0}")]
    Syntax(String),
    #[error("cannot be rendered: {0}")]
    Render(String),
    #[error("renders to more than {MAX_OUTPUT_BYTES} bytes; make the output smaller")]
    OutputTooLarge,
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    // Config files are not HTML: values go in as they are.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(FUEL));
    // A config file ends as its template does, final newline included.
    env.set_keep_trailing_newline(true);
    env
}

/// One line for a minijinja error: its message with the line it is on.
fn describe(error: &minijinja::Error) -> String {
    let mut text = match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    };
    if let Some(line) = error.line() {
        text.push_str(&format!(" (line {line})"));
    }
    text
}

/// How a spec's templates are checked: [`check`] where the engine is
/// linked (tetherd, the CLI), [`check_size`] where it is not (the agent,
/// whose helper compiles them as it renders).
pub type TemplateCheck = fn(&str, &str) -> Result<(), TemplateError>;

/// The size of `source` only; needs no template engine.
pub fn check_size(_name: &str, source: &str) -> Result<(), TemplateError> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::TooLarge {
            bytes: source.len(),
        });
    }
    Ok(())
}

/// Compiles `source`: size and syntax.
pub fn check(name: &str, source: &str) -> Result<(), TemplateError> {
    check_size(name, source)?;
    environment()
        .template_from_named_str(name, source)
        .map(drop)
        .map_err(|e| TemplateError::Syntax(describe(&e)))
}

/// Renders `source` with `context`; any undefined variable is an error.
pub fn render(name: &str, source: &str, context: &impl Serialize) -> Result<String, TemplateError> {
    check(name, source)?;
    let env = environment();
    let template = env
        .template_from_named_str(name, source)
        .map_err(|e| TemplateError::Syntax(describe(&e)))?;
    let output = template
        .render(context)
        .map_err(|e| TemplateError::Render(describe(&e)))?;
    if output.len() > MAX_OUTPUT_BYTES {
        return Err(TemplateError::OutputTooLarge);
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_with_the_context_and_refuses_undefined_variables() {
        let context = json!({"device": {"name": "pump-1"}, "values": {"port": 8080}});
        assert_eq!(
            render(
                "a.conf",
                "name={{ device.name }} port={{ values.port }}",
                &context
            )
            .expect("renders"),
            "name=pump-1 port=8080"
        );
        let err = render("a.conf", "{{ values.prot }}", &context).expect_err("undefined");
        assert!(matches!(err, TemplateError::Render(_)), "{err}");
        assert!(err.to_string().contains("undefined"), "{err}");
        // `default` makes an optional value explicit.
        assert_eq!(
            render("a.conf", "{{ values.missing | default('x') }}", &context).expect("renders"),
            "x"
        );
        assert_eq!(
            render("a.conf", "a={{ values.port }}\n", &context).expect("renders"),
            "a=8080\n",
            "the final newline stays"
        );
        // No HTML escaping in config files.
        assert_eq!(
            render("a.conf", "{{ v }}", &json!({"v": "<a&b>"})).expect("renders"),
            "<a&b>"
        );
    }

    #[test]
    fn syntax_errors_and_sizes_are_refused() {
        let err = check("a.conf", "{% if x %}never closed").expect_err("syntax");
        assert!(matches!(err, TemplateError::Syntax(_)), "{err}");
        assert!(err.to_string().contains("line"), "{err}");
        let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        assert!(matches!(
            check("a.conf", &big),
            Err(TemplateError::TooLarge { .. })
        ));
        let err = render(
            "a.conf",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            &json!({}),
        )
        .expect_err("out of fuel or too large");
        assert!(matches!(err, TemplateError::Render(_)), "{err}");
    }
}
