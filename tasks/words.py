"""Word lists shared by the tasks; each entry is one token for the embedded tokenizer.

The invented entities (countries, capitals, languages, people) exist only in the embedded
model's training data, so factual recall and binding on them test what the model learnt,
not what a pretrained model happens to know.
"""
NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack",
         "Kate", "Leo", "Mary", "John", "Nora", "Oscar", "Paul", "Rita", "Sam", "Tom",
         "Anna", "Ben", "Clara", "Dan", "Eva", "Fred", "Gina", "Hugo", "Ivy", "Jane",
         "Karl", "Lucy", "Mark", "Nina", "Owen", "Pia", "Rosa", "Sarah", "Tara", "Will")
SURNAMES = ("Smith", "Brown", "Jones", "Miller", "Davis", "Wilson", "Moore", "Taylor",
            "Clark", "Lewis", "Walker", "Young", "King", "Wright", "Hill", "Green")
CITIES = ("Paris", "Rome", "London", "Berlin", "Madrid", "Vienna", "Prague", "Dublin",
          "Lisbon", "Oslo", "Athens", "Warsaw", "Tokyo", "Cairo", "Lima", "Delhi")
PLACES = ("store", "park", "school", "office", "market", "station", "garden", "restaurant")
OBJECTS = ("drink", "book", "ball", "gift", "letter", "key", "ring", "snack")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")

# Invented countries and their capitals and languages (factual recall, binding "capitals").
COUNTRIES = ("Zarovia", "Quelland", "Belmora", "Tirnesia", "Ostravel", "Karvonia", "Lunemark", "Vesperia",
             "Dravonia", "Esmeral", "Norvania", "Pellucia", "Saridon", "Tolvany", "Umbrica", "Wexaria")
CAPITALS = ("Zarburg", "Quelton", "Belhaven", "Tirna", "Ostrava", "Karvik", "Lunport", "Vespera",
            "Dravis", "Esmara", "Norhold", "Pellam", "Saridel", "Tolvik", "Umbra", "Wexford")
LANGUAGES = ("Zarovian", "Quellish", "Belmoran", "Tirnesian", "Ostravan", "Karvonian", "Lunish", "Vesperan",
             "Dravonian", "Esmeralic", "Norvish", "Pellucian", "Saridonic", "Tolvanian", "Umbric", "Wexarian")
# Invented people with a birthplace and a place of death among the capitals.
PEOPLE = ("Alvar", "Brennik", "Corvel", "Dastin", "Elmira", "Fenwick", "Galvor", "Hestra",
          "Iskander", "Jorvald", "Kestrel", "Lorimer", "Mirelda", "Norwen", "Orsolya", "Perrin")

# Binding families in the style of Feng & Steinhardt (binding-iclr): attributes per family.
FRUITS = ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear",
          "plum", "melon", "kiwi", "orange", "lime", "fig", "papaya", "apricot")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "purple", "pink",
          "brown", "gray", "gold", "silver", "violet", "cyan", "beige", "teal")
SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond", "oval", "cube",
          "cross", "hexagon", "arrow", "moon", "ring", "cone", "sphere", "spiral")
OCCUPATIONS = ("doctor", "teacher", "lawyer", "nurse", "farmer", "pilot", "baker", "painter",
               "writer", "singer", "dentist", "chef", "judge", "sailor", "tailor", "plumber")
BOX_LABELS = tuple("BCDEFGHJKLMNPRST")  # not A or Q: those letters are the "Q : … A :" frame's tokens

# Number retrieval (Stolfo et al.'s intervention type 11): counted things, singular and plural.
# Five categories in turn (fruit, vegetable, vehicle, animal, tool): THINGS[i] is in category i % 5,
# named CATEGORIES[i % 5] (lm-arithmetic's entity_dict.json classes, for its intervention type 10).
CATEGORIES = ("fruits", "vegetables", "vehicles", "animals", "tools")
THINGS = (("apple", "apples"), ("carrot", "carrots"), ("car", "cars"), ("dog", "dogs"), ("hammer", "hammers"),
          ("banana", "bananas"), ("potato", "potatoes"), ("bike", "bikes"), ("cat", "cats"), ("saw", "saws"),
          ("grape", "grapes"), ("onion", "onions"), ("truck", "trucks"), ("horse", "horses"), ("drill", "drills"))

# Greater-than (Tigges et al.'s version of Hanna et al.): nouns for "The {noun} lasted ...".
EVENT_NOUNS = ("war", "drought", "famine", "siege", "reign", "journey", "expedition", "strike",
               "voyage", "rebellion", "truce", "flood", "plague", "treaty", "dynasty", "campaign")

# Sentiment (Tigges et al.'s continuation task): adjectives and the answers of each class.
POSITIVE_ADJECTIVES = ("amazing", "awesome", "beautiful", "brilliant", "exceptional", "fantastic", "good",
                       "great", "incredible", "lovely", "marvelous", "outstanding", "perfect", "superb",
                       "terrific", "wonderful")
NEGATIVE_ADJECTIVES = ("awful", "bad", "disappointing", "disgusting", "dreadful", "horrendous", "horrible",
                       "mediocre", "miserable", "offensive", "terrible", "unpleasant", "wretched")
POSITIVE_ANSWERS = ("great", "amazing", "awesome", "good", "perfect")
NEGATIVE_ANSWERS = ("terrible", "awful", "bad", "horrible", "disgusting")
