# The pool-size study (Table 6): a named target, not part of `all`.
