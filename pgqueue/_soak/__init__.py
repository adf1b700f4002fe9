"""``pgqueue soak``: real workers and schedulers under a seeded chaos loop, then a check of the books.

- ``app``: the App the child processes run (kept light: workers import this package).
- ``runner``: one run, start to finish; ``chaos``: the fault plan and its player;
  ``enqueuer``: the job stream; ``books``: the scoreboard. The SQL is ``pgqueue._db.soak``'s.
"""
