"""keras-tether's demo: small experiments on digits, with a report and plots.

Run it from the repository's root with `make demo`, or
`python -m demo --out demo-output`.
"""
