"""Tasks and their data, below every stage that uses them: the fictional world of people and facts, arithmetic
word problems, problems with checkable answers, the gold judge, the embedded SFT mixture, preference rankings,
and the checks on conversations they all share."""
