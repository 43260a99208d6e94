"""The Hydra configs (``conf/``) travel inside the package (``rayrlhf/conf/``), so that a
non-editable install (``pip install .``, a wheel) finds them; an editable install reads them
from the checkout (``rayrlhf.paths.conf_dir``). Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "rayrlhf" / "conf"
        for source in sorted(Path("conf").rglob("*.yaml")):
            destination = target / source.relative_to("conf")
            self.mkpath(str(destination.parent))
            self.copy_file(str(source), str(destination))


setup(cmdclass={"build_py": BuildPyWithConfigs})
