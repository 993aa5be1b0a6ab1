"""Turn library errors into one clear CLI message and a non-zero exit, never a traceback."""

from __future__ import annotations

import click

from deeplense_ssl.errors import DeepLenseError


def run_with_clean_errors(group: click.Group, argv: list[str] | None) -> int:
    """Invoke ``group`` and map known failures to exit codes.

    Returns:
        0 on success, 1 for a :class:`DeepLenseError` or missing optional dependency,
        2 for usage errors, 130 on Ctrl-C.
    """
    try:
        group.main(args=argv, prog_name="deeplense-ssl", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("Interrupted; no partial output was kept.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except DeepLenseError as exc:
        click.echo(f"Error: {exc}", err=True)
        return 1
    except ModuleNotFoundError as exc:
        click.echo(
            f"Error: missing optional dependency {exc.name!r}. "
            "Install it (e.g. pip install 'deeplense-ssl[sim]' for lenstronomy).",
            err=True,
        )
        return 1
    except FileNotFoundError as exc:
        click.echo(f"Error: {exc.filename or exc}: no such file or directory.", err=True)
        return 1
    except OSError as exc:  # permission denied, disk full, ...: name the file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(
            f"Error: {where}{exc.strerror or exc}. Check the path and its permissions.", err=True
        )
        return 1
    return 0
