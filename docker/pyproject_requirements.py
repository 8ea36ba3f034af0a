"""Print the project's requirements from pyproject.toml, one a line: the dependencies and the
optional extras named as arguments (e.g. `gpu`). The image installs these before the code is
copied, so a code edit does not reinstall them."""

import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
extras = [name for arg in sys.argv[1:] for name in arg.replace(",", " ").split()]
unknown = sorted(set(extras) - set(project.get("optional-dependencies", {})))
if unknown:
    sys.exit(f"unknown extras: {', '.join(unknown)}")
print("\n".join(project["dependencies"] + [req for name in extras for req in project["optional-dependencies"][name]]))
