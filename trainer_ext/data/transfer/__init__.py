"""The transfer set: candidate sentences from its sources (a fine-tuned generator, unlabelled text), filtered and labelled by the teacher in one place."""
