"""Runs a ComfyUI host's own ``main.py`` with its user folder moved: ``python serve_host.py HOST USER_DIR ARGS...``.

The 2024 ComfyUI has no ``--user-directory`` option and would write the frontend's settings into the host folder;
setting ``folder_paths.user_directory`` before ``main.py`` runs keeps every host's folder untouched.
"""
import runpy
import sys
from pathlib import Path


def main() -> None:
    host, user_directory, arguments = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    sys.path.insert(0, str(host))
    sys.argv = [str(host / "main.py"), *arguments]
    import comfy.options

    comfy.options.enable_args_parsing()  # as main.py does first; folder_paths parses the arguments on import
    import folder_paths

    folder_paths.user_directory = user_directory
    runpy.run_path(str(host / "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()
