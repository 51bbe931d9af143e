"""Word lists shared by the tasks; each entry is one token for the embedded tokenizer."""
NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack",
         "Kate", "Leo", "Mary", "John", "Nora", "Oscar", "Paul", "Rita", "Sam", "Tom")
CITIES = ("Paris", "Rome", "London", "Berlin", "Madrid", "Vienna", "Prague", "Dublin",
          "Lisbon", "Oslo", "Athens", "Warsaw", "Tokyo", "Cairo", "Lima", "Delhi")
PLACES = ("store", "park", "school", "office", "market", "station")
OBJECTS = ("drink", "book", "ball", "gift", "letter", "key")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
