"""The condition-monitoring model: normal / bearing wear / sensor fault from vibration and temperature windows.

`python -m models.condition.train --out models/condition/v1` rebuilds a version; see its README.
"""
