(function(){
  var data = JSON.parse(document.getElementById('cell-data').textContent);
  var box = document.getElementById('details');
  var opener = null;
  function show(key){
    var c = data[key]; if(!c) return;
    var dl = document.getElementById('details-list');
    while(dl.firstChild) dl.removeChild(dl.firstChild);
    c.fields.forEach(function(f){
      var dt = document.createElement('dt'); dt.textContent = f[0];
      var dd = document.createElement('dd'); dd.textContent = f[1];
      dl.appendChild(dt); dl.appendChild(dd);
    });
    document.getElementById('details-title').textContent = c.title;
    box.style.display = 'block';
  }
  // Cells are buttons for the keyboard too: Tab reaches them, Enter or Space shows the details, Escape
  // (or close) hides them and puts the keyboard back on the cell.
  document.querySelectorAll('[data-key]').forEach(function(el){
    el.addEventListener('click', function(){ opener = el; show(el.getAttribute('data-key')); });
    el.addEventListener('keydown', function(event){
      if (event.key !== 'Enter' && event.key !== ' ') return;
      event.preventDefault();
      opener = el; show(el.getAttribute('data-key'));
    });
  });
  function hide(){
    if (box.style.display !== 'block') return;
    box.style.display = 'none';
    if (opener) opener.focus();
  }
  document.getElementById('details-close').addEventListener('click', hide);
  document.addEventListener('keydown', function(event){ if (event.key === 'Escape') hide(); });
})();
