"""Developer sessions: `nox -s tests`, `nox -s lint`."""

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-c", "constraints.txt", "-e", ".[dev]")  # the tested versions
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "genlip_lit", "tests", "benchmarks", "docs/hooks.py", "noxfile.py")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site with warnings as errors (tests/test_docs.py runs the same build)."""
    session.install("-c", "constraints.txt", "-e", ".[dev]")
    session.run("mkdocs", "build", "--strict", *session.posargs)
