"""Intake: photos in, checked and classified, cropped and captioned into a training dataset."""
