"""What a caller asks for: the request models, their rules, the model catalog, reference images,
data URLs, parsed replies.
"""
