"""The commands of the ``starqso`` click group (:mod:`starqso.cli`), one library call each.

Each module defines its commands as plain click commands and imports TensorFlow only inside
the commands that need it; :mod:`starqso.cli` adds them to the group.
"""
