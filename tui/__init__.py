"""affiner's front ends: the Textual application and the scriptable CLI.

Both sit on top of `planner` and on the run directories `runner` writes. Importing this
package is cheap; Textual loads only when a screen is shown.
"""
